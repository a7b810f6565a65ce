#!/usr/bin/env python3
"""Writes the MemBroker Grafana dashboards into deploy/grafana/dashboards/.

  python3 deploy/grafana/dashboards.py

Three dashboards, in the order an operator opens them:
  membroker-fleet.json  fleet overview (home dashboard), variable host (multi)
  membroker-host.json   one host: VM targets against capacity, margin, PSI
  membroker-vm.json     one VM: target vs actual vs demand vs floor, stalls
Every query uses metrics of deploy/metrics.txt (deploy_config_test) and
returns data against a simulated cluster (dashboard_queries_e2e_test).
Edit this file, not the JSON, and commit both.
"""

import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


class Board:
    """Panels laid out left to right in rows of 24 columns."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title,
                            "collapsed": False, "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
                            "panels": []})
        self.y += 1

    def panel(self, kind, title, description, targets, w=12, h=8, unit=None, stack=False,
              overrides=None, options=None, min_=None, max_=None):
        defaults = {}
        if unit:
            defaults["unit"] = unit
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        if stack:
            defaults["custom"] = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40}
        p = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self._place(w, h),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                | ({"instant": True, "format": "table"} if kind == "table" else {})
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": options or {},
        }
        self.panels.append(p)


def variable(name, label, query, multi):
    v = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": name},
        "refresh": 2,
        "sort": 1,
        "includeAll": multi,
        "multi": multi,
    }
    if multi:
        v["allValue"] = ".*"
        v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        v["current"] = {}
    return v


def dashboard(uid, title, board, variables, links):
    return {
        "uid": uid,
        "title": title,
        "tags": ["membroker"],
        "schemaVersion": 38,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "timezone": "utc",
        "annotations": {"list": []},
        "links": [{"title": t, "type": "link", "url": u, "keepTime": True, "includeVars": True}
                  for t, u in links],
        "templating": {"list": [{"name": "datasource", "label": "Data source", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}] + variables},
        "panels": board.panels,
    }


LINKS = [("Fleet overview", "/d/membroker-fleet"), ("Host detail", "/d/membroker-host"),
         ("VM detail", "/d/membroker-vm")]
HOSTS = "label_values(membroker_host_capacity_bytes, host)"


def fleet():
    b = Board()
    h = 'host=~"$host"'
    b.row("Fleet")
    b.panel("stat", "Memory reclaimed", "Sum over VMs of configured max minus target.",
            [(f"sum(membroker_host_reclaimed_bytes{{{h}}})", "reclaimed")], w=4, h=4, unit="bytes")
    b.panel("stat", "Reclaimed share", "Reclaimed memory as a share of the VMs' configured memory.",
            [(f"sum(membroker_host_reclaimed_bytes{{{h}}}) / sum(membroker_vm_max_bytes{{{h}}})",
              "share")], w=4, h=4, unit="percentunit")
    b.panel("stat", "Overcommit ratio", "VMs' configured memory over the hosts' capacity for VMs.",
            [(f"sum(membroker_vm_max_bytes{{{h}}}) / sum(membroker_host_capacity_bytes{{{h}}})",
              "ratio")], w=4, h=4, unit="none")
    b.panel("stat", "Hosts short of demand",
            "Hosts whose VMs' demand exceeds their capacity (overcommitted at demand).",
            [(f"count(sum by (host) (membroker_vm_demand_bytes{{{h}}}) > on (host) "
              f"membroker_host_capacity_bytes{{{h}}}) or vector(0)", "hosts")], w=4, h=4)
    b.panel("stat", "VMs under pressure", "VMs swapping in, or with demand above what they have.",
            [(f"count(rate(membroker_vm_swap_in_bytes_total{{{h}}}[{RATE}]) > 0 or on (host, vm) "
              f"(membroker_vm_demand_bytes{{{h}}} > on (host, vm) membroker_vm_actual_bytes)) "
              "or vector(0)", "VMs")], w=4, h=4)
    b.panel("stat", "Guest OOM kills", "OOM kills in guests over the dashboard's time range.",
            [(f"sum(increase(membroker_vm_oom_kills_total{{{h}}}[$__range]))", "kills")], w=4, h=4)
    b.panel("stat", "Connected agents", "Agent streams open on the broker.",
            [("membroker_connected_agents", "agents")], w=4, h=4)
    b.panel("stat", "Overcommitted hosts", "Hosts that cannot hold their VMs' floors.",
            [(f"sum(membroker_host_overcommitted{{{h}}})", "hosts")], w=4, h=4)
    b.panel("stat", "Unhealthy balloons", "VMs whose balloon is stuck or has no driver.",
            [(f"count(membroker_vm_balloon_healthy{{{h}}} == 0) or vector(0)", "VMs")], w=4, h=4)
    b.panel("stat", "Untrusted guest statistics", "VMs whose statistics are stale or impossible.",
            [(f"sum(membroker_vm_stats_untrusted{{{h}}})", "VMs")], w=4, h=4)
    b.panel("table", "Versions", "Build of every scraped daemon.",
            [("max by (component, version) (membroker_build_info)", "")], w=8, h=4)
    b.panel("timeseries", "Configured, targets and capacity",
            "Sum of the VMs' configured memory, of their targets, and of the hosts' capacity.",
            [(f"sum(membroker_vm_max_bytes{{{h}}})", "configured"),
             (f"sum(membroker_host_target_bytes{{{h}}})", "targets"),
             (f"sum(membroker_host_capacity_bytes{{{h}}})", "capacity")], unit="bytes")
    b.panel("timeseries", "Memory reclaimed by host", "Configured minus target, per host.",
            [(f"membroker_host_reclaimed_bytes{{{h}}}", "{{host}}")], unit="bytes", stack=True)
    b.row("Stalls and OOMs")
    b.panel("timeseries", "Top VMs by swap-in", "Guest swap-in rate: time the guest stalls on memory.",
            [(f"topk(10, rate(membroker_vm_swap_in_bytes_total{{{h}}}[{RATE}]))",
              "{{host}}/{{vm}}")], w=8, unit="Bps")
    b.panel("timeseries", "Top VMs by major faults", "Guest major page faults per second.",
            [(f"topk(10, rate(membroker_vm_major_faults_total{{{h}}}[{RATE}]))",
              "{{host}}/{{vm}}")], w=8, unit="ops")
    b.panel("timeseries", "Guest OOM kills",
            "OOM kills per VM as the guest or its console log reports them, and every kill the "
            "broker saw per host (reported, or inferred from the guest's statistics), each of "
            "which raises that guest's demand.",
            [(f"sum by (host, vm) (increase(membroker_vm_oom_kills_total{{{h}}}[{RATE}]))",
              "{{host}}/{{vm}}"),
             (f"sum by (host, source) (increase(membroker_host_guest_oom_kills_total{{{h}}}[{RATE}]))",
              "{{host}} seen by the broker ({{source}})")], w=8)
    b.row("Decisions")
    b.panel("timeseries", "Decisions and reports per second",
            "Target sets pushed, reports received and rejected.",
            [(f"sum(rate(membroker_targets_pushed_total{{{h}}}[{RATE}]))", "decisions pushed"),
             (f"sum(rate(membroker_reports_received_total{{{h}}}[{RATE}]))", "reports received"),
             (f"sum(rate(membroker_reports_rejected_total[{RATE}])) or vector(0)",
              "reports rejected")], unit="ops")
    b.panel("timeseries", "Broker decision latency (report to pushed targets)",
            "Target: p99 under 100 ms.",
            [(f"histogram_quantile(0.5, sum by (le) (rate(membroker_decision_latency_seconds_bucket[{RATE}])))", "p50"),
             (f"histogram_quantile(0.99, sum by (le) (rate(membroker_decision_latency_seconds_bucket[{RATE}])))", "p99"),
             (f"sum(rate(membroker_decision_latency_seconds_sum[{RATE}])) / "
              f"sum(rate(membroker_decision_latency_seconds_count[{RATE}]))", "mean")], unit="s")
    b.panel("timeseries", "VMs by reason of their target", "How many VMs hold each reason.",
            [(f"count by (reason) (membroker_vm_target_reason{{{h}}} == 1)", "{{reason}}")])
    b.panel("timeseries", "Sacrifices and overcommit episodes",
            "Free margin lent, default floors yielded, overcommit episodes.",
            [(f"sum by (host, kind) (increase(membroker_host_sacrifices_total{{{h}}}[{RATE}]))",
              "{{host}} {{kind}}"),
             (f"sum by (host) (increase(membroker_host_overcommit_episodes_total{{{h}}}[{RATE}]))",
              "{{host}} overcommit")])
    b.panel("timeseries", "Rebalance plan",
            "The broker's advice, recomputed every 15 s: VM moves that restore short hosts "
            "(membrokerctl plan), hosts short now and still short after the moves.",
            [("membroker_plan_moves", "moves"),
             ("membroker_plan_hosts_short", "hosts short"),
             ("membroker_plan_hosts_short_after", "short after the moves")], w=8)
    b.panel("timeseries", "Memory the plan moves", "Sum of the planned moves' sizes.",
            [("membroker_plan_moved_bytes", "moved")], w=8, unit="bytes")
    b.row("Agents")
    b.panel("state-timeline", "Agent connected to broker", "1 while the agent's stream is welcomed.",
            [(f"membroker_agent_broker_connected{{{h}}}", "{{host}}")], h=6)
    b.panel("timeseries", "Agent reconnects", "Attempts to re-establish the broker stream.",
            [(f"sum by (host) (increase(membroker_agent_reconnects_total{{{h}}}[{RATE}]))",
              "{{host}}")], h=6)
    b.panel("timeseries", "Agent reports and targets", "Per agent.",
            [(f"sum by (host) (rate(membroker_agent_reports_sent_total{{{h}}}[{RATE}]))", "{{host}} reports"),
             (f"sum by (host) (rate(membroker_agent_targets_applied_total{{{h}}}[{RATE}]))", "{{host}} applied"),
             (f"sum by (host) (rate(membroker_agent_target_errors_total{{{h}}}[{RATE}]))", "{{host}} errors")],
            unit="ops")
    b.panel("timeseries", "Agent report duration",
            "Time to build and send one report.",
            [(f"histogram_quantile(0.99, sum by (host, le) (rate(membroker_agent_report_duration_seconds_bucket{{{h}}}[{RATE}])))", "{{host}} p99"),
             (f"sum by (host) (rate(membroker_agent_report_duration_seconds_sum{{{h}}}[{RATE}])) / "
              f"sum by (host) (rate(membroker_agent_report_duration_seconds_count{{{h}}}[{RATE}]))",
              "{{host}} mean")], unit="s")
    b.panel("timeseries", "Stuck balloons (agent view)", "Per host.",
            [(f"sum by (host) (membroker_agent_vm_stuck{{{h}}})", "{{host}}")])
    b.panel("timeseries", "Local grants and hung hypervisor calls",
            "Memory agents granted on their own to guests under acute pressure; hung calls.",
            [(f"sum by (host) (rate(membroker_agent_local_grant_bytes_total{{{h}}}[{RATE}]))", "{{host}} bytes/s"),
             (f"sum by (host) (increase(membroker_agent_local_grants_total{{{h}}}[{RATE}]))", "{{host}} grants"),
             (f"max by (host) (membroker_agent_hypervisor_calls_hung{{{h}}})", "{{host}} hung calls")])
    b.panel("timeseries", "Host-side working-set probe cost",
            "CPU the agents spend measuring VMs without usable guest statistics from the host "
            "(clear_refs + smaps): per second, per VM per round, and VMs measured per round.",
            [(f"sum by (host) (rate(membroker_agent_working_set_cpu_seconds_total{{{h}}}[{RATE}]))", "{{host}} CPU s/s"),
             (f"max by (host) (membroker_agent_working_set_cpu_seconds_per_vm{{{h}}})", "{{host}} CPU s per VM per round"),
             (f"max by (host) (membroker_agent_working_set_measured_vms{{{h}}})", "{{host}} VMs measured")])
    b.row("Operations")
    b.panel("timeseries", "Admin requests", "membrokerctl and API calls by method and code.",
            [(f"sum by (method, code) (rate(membroker_admin_requests_total[{RATE}]))",
              "{{method}} {{code}}")], w=24, unit="ops")
    return dashboard("membroker-fleet", "MemBroker fleet overview", b,
                     [variable("host", "Host", HOSTS, True)], LINKS[1:])


def host():
    b = Board()
    h = 'host="$host"'
    b.row("Memory")
    capacity_line = [{"matcher": {"id": "byName", "options": "capacity"},
                      "properties": [{"id": "custom.stacking", "value": {"mode": "none"}},
                                     {"id": "custom.fillOpacity", "value": 0},
                                     {"id": "custom.lineWidth", "value": 2}]}]
    b.panel("timeseries", "VM targets against capacity",
            "Each VM's target, stacked, under the host's capacity for VMs.",
            [(f"membroker_vm_target_bytes{{{h}}}", "{{vm}}"),
             (f"membroker_host_capacity_bytes{{{h}}}", "capacity")],
            w=16, h=10, unit="bytes", stack=True, overrides=capacity_line)
    b.panel("stat", "Free margin", "Capacity minus the sum of targets.",
            [(f"membroker_host_capacity_bytes{{{h}}} - membroker_host_target_bytes{{{h}}}",
              "margin")], w=4, h=5, unit="bytes")
    b.panel("stat", "Reclaimed", "Configured minus target over this host's VMs.",
            [(f"membroker_host_reclaimed_bytes{{{h}}}", "reclaimed")], w=4, h=5, unit="bytes")
    b.panel("stat", "Free in guests, back on host",
            "VMs with free page reporting: memory they have (actual) that is not resident on "
            "the host (QEMU RSS), i.e. freed in the guest and already reclaimed without the "
            "balloon.",
            [(f"membroker_host_guest_free_on_host_bytes{{{h}}}", "free, on host")], w=4, h=5,
            unit="bytes")
    b.panel("stat", "Demand over capacity", "Above 100 %: the host is short of demand.",
            [(f"sum(membroker_vm_demand_bytes{{{h}}}) / on () membroker_host_capacity_bytes{{{h}}}",
              "demand")], w=4, h=5, unit="percentunit")
    b.panel("stat", "Overcommitted at floors", "1: even the floors do not fit.",
            [(f"membroker_host_overcommitted{{{h}}}", "overcommitted")], w=4, h=5)
    b.panel("timeseries", "Free margin and host memory available",
            "Capacity minus targets (broker) and MemAvailable (agent).",
            [(f"membroker_host_capacity_bytes{{{h}}} - membroker_host_target_bytes{{{h}}}", "free margin"),
             (f"membroker_agent_host_memory_available_bytes{{{h}}}", "MemAvailable"),
             (f"membroker_agent_host_capacity_bytes{{{h}}}", "capacity (agent)")], unit="bytes")
    b.panel("timeseries", "Reserved for VMs about to start",
            "Memory held free by reservations (membrokerctl reserve); the host's decision "
            "uses its capacity minus this.",
            [(f"membroker_host_reserved_bytes{{{h}}}", "reserved")], unit="bytes", min_=0)
    b.panel("timeseries", "Memory pressure (PSI avg10)", "Share of time tasks stall on memory.",
            [(f"membroker_host_memory_pressure_some_ratio{{{h}}}", "some"),
             (f"membroker_host_memory_pressure_full_ratio{{{h}}}", "full"),
             (f"membroker_agent_host_memory_pressure_some_ratio{{{h}}}", "some (agent)")],
            unit="percentunit", min_=0)
    b.panel("timeseries", "Memory stall time", "Seconds per second stalled on memory (PSI totals).",
            [(f"sum by (kind) (rate(membroker_host_memory_stall_seconds_total{{{h}}}[{RATE}]))",
              "{{kind}}")], unit="percentunit")
    b.panel("timeseries", "Demand, targets and actual", "Sums over the host's VMs.",
            [(f"sum(membroker_vm_demand_bytes{{{h}}})", "demand"),
             (f"sum(membroker_vm_target_bytes{{{h}}})", "targets"),
             (f"sum(membroker_vm_actual_bytes{{{h}}})", "actual"),
             (f"sum(membroker_vm_floor_bytes{{{h}}})", "floors")], unit="bytes")
    b.row("Decisions")
    b.panel("timeseries", "Decisions and reports", "Target sets pushed and reports received.",
            [(f"rate(membroker_targets_pushed_total{{{h}}}[{RATE}])", "decisions pushed"),
             (f"rate(membroker_reports_received_total{{{h}}}[{RATE}])", "reports received"),
             (f"rate(membroker_agent_targets_applied_total{{{h}}}[{RATE}])", "targets applied (agent)")],
            unit="ops")
    b.panel("table", "Reason of each VM's target", "The current reason per VM.",
            [(f"membroker_vm_target_reason{{{h}}} == 1", "")])
    b.panel("timeseries", "Sacrifices and overcommit episodes", "For this host.",
            [(f"increase(membroker_host_sacrifices_total{{{h}}}[{RATE}])", "{{kind}}"),
             (f"increase(membroker_host_overcommit_episodes_total{{{h}}}[{RATE}])", "overcommit")])
    b.panel("timeseries", "VM stalls", "Swap-in per VM on this host.",
            [(f"rate(membroker_vm_swap_in_bytes_total{{{h}}}[{RATE}])", "{{vm}}")], unit="Bps")
    return dashboard("membroker-host", "MemBroker host detail", b,
                     [variable("host", "Host", HOSTS, False)], [LINKS[0], LINKS[2]])


def vm():
    b = Board()
    v = 'host="$host", vm="$vm"'
    b.row("Memory")
    b.panel("timeseries", "Target, actual, demand, floor",
            "What the broker set, what the guest has, what it needs, what it keeps at least.",
            [(f"membroker_vm_target_bytes{{{v}}}", "target"),
             (f"membroker_vm_actual_bytes{{{v}}}", "actual"),
             (f"membroker_vm_demand_bytes{{{v}}}", "demand"),
             (f"membroker_vm_floor_bytes{{{v}}}", "floor"),
             (f"membroker_vm_max_bytes{{{v}}}", "configured")], w=16, h=10, unit="bytes")
    b.panel("stat", "Reason of the current target", "Why the VM has its target now.",
            [(f"membroker_vm_target_reason{{{v}}} == 1", "{{reason}}")], w=8, h=5,
            options={"textMode": "name", "reduceOptions": {"calcs": ["lastNotNull"]}})
    b.panel("stat", "Balloon healthy", "0: stuck or no driver; nothing is reclaimed.",
            [(f"membroker_vm_balloon_healthy{{{v}}}", "healthy")], w=4, h=5)
    b.panel("stat", "Statistics untrusted", "1: stale or impossible guest statistics.",
            [(f"membroker_vm_stats_untrusted{{{v}}}", "untrusted")], w=4, h=5)
    b.panel("timeseries", "Swap-in", "Guest swap-in rate.",
            [(f"rate(membroker_vm_swap_in_bytes_total{{{v}}}[{RATE}])", "swap-in")], w=8, unit="Bps")
    b.panel("timeseries", "Major faults", "Guest major page faults per second.",
            [(f"rate(membroker_vm_major_faults_total{{{v}}}[{RATE}])", "major faults")], w=8, unit="ops")
    b.panel("timeseries", "Guest OOM kills", "Kills by the guest's OOM killer.",
            [(f"increase(membroker_vm_oom_kills_total{{{v}}}[{RATE}])", "OOM kills")], w=8)
    b.panel("state-timeline", "Balloon health over time", "Broker and agent views.",
            [(f"membroker_vm_balloon_healthy{{{v}}}", "healthy (broker)"),
             (f"membroker_agent_vm_stuck{{{v}}}", "stuck (agent)")], h=6)
    b.panel("state-timeline", "Reason over time", "The reason of the VM's target.",
            [(f"membroker_vm_target_reason{{{v}}} == 1", "{{reason}}")], h=6)
    b.panel("timeseries", "Balloon actual vs target (agent)", "As the agent applied it.",
            [(f"membroker_agent_vm_actual_bytes{{{v}}}", "actual"),
             (f"membroker_agent_vm_target_bytes{{{v}}}", "target")], w=16, unit="bytes")
    b.panel("stat", "Excluded from resizing", "PCI passthrough, hugepage or locked memory: "
            "the agent never resizes the VM (reason in the label).",
            [(f"membroker_agent_vm_excluded{{{v}}} or on() vector(0)", "{{reason}}")], w=8,
            options={"textMode": "value_and_name", "reduceOptions": {"calcs": ["lastNotNull"]}})
    b.panel("timeseries", "Which mechanism moved what (agent)",
            "Memory virtio-mem has plugged and memory the balloon holds out of the guest.",
            [(f"membroker_agent_vm_virtio_mem_plugged_bytes{{{v}}}", "virtio-mem plugged"),
             (f"membroker_agent_vm_balloon_inflated_bytes{{{v}}}", "balloon inflated")],
            w=16, unit="bytes")
    b.panel("stat", "Free page reporting", "1: the VM's balloon has free page reporting on "
            "(QEMU virtio-balloon free-page-reporting=on; libvirt freePageReporting='on').",
            [(f"membroker_agent_vm_free_page_reporting{{{v}}}", "reporting")], w=8,
            options={"textMode": "value_and_name", "reduceOptions": {"calcs": ["lastNotNull"]}})
    vms = 'label_values(membroker_vm_target_bytes{host="$host"}, vm)'
    return dashboard("membroker-vm", "MemBroker VM detail", b,
                     [variable("host", "Host", HOSTS, False), variable("vm", "VM", vms, False)],
                     LINKS[:2])


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
    for name, board in (("membroker-fleet", fleet()), ("membroker-host", host()),
                        ("membroker-vm", vm())):
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(board, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()

#pragma once
// `membrokerctl top`: one frame of the operator's live view. On a terminal,
// per-host bars of targets and demand against capacity, then VMs sorted by
// pressure, with short hosts and stuck balloons highlighted (ANSI colour,
// plain ASCII otherwise). Without a terminal, the same data as tables with
// the highlights in words, one frame per refresh. Pure functions of the
// replies: no I/O, no clock.

#include <string>
#include <vector>

#include "membroker/v1/admin.pb.h"

namespace membroker::client {

// How to draw a frame.
struct TopViewOptions {
  // Bars, colours and highlights for a terminal; false: plain tables.
  bool terminal = false;
  // Colour escapes (terminal only; off for NO_COLOR or TERM=dumb).
  bool color = false;
  // Cells of a host's bar (at least 10).
  int bar_width = 40;
  // The tables' wide columns.
  bool wide = false;
};

// True when the VMs' demand on `host` exceeds its capacity for VMs.
bool HostShortOfDemand(const v1::Host& host);

// True when the VM's balloon is stuck or has no driver.
bool BalloonStuck(const v1::Vm& vm);

// How hard the guest stalls on memory: swap-in bytes per second plus a
// page (4 KiB) per major fault, then the shortfall of its target below its
// demand as a tiebreaker. Larger is worse.
double PressureScore(const v1::Vm& vm);

// `vms` with the most pressured VMs first (stuck balloons before others of
// equal score); ties by host, then name.
std::vector<v1::Vm> SortByPressure(const v1::ListVmsResponse& vms);

// One host's bar, `width` cells between brackets: '#' up to the sum of
// targets, '+' for demand above the targets, '|' at the capacity (the
// scale is the largest of the three). "[...]" with width + 1 cells inside,
// so that a capacity at the right end still shows.
std::string HostBar(const v1::Host& host, int width);

// The whole frame below the caller's header line.
std::string RenderTopFrame(const v1::ListHostsResponse& hosts, const v1::ListVmsResponse& vms,
                           const TopViewOptions& options);

}  // namespace membroker::client

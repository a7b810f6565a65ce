# The real hypervisor backends (libvirt and QMP) as their own library, so that
# their tests and benchmarks do not need the rest of the agent. Included from
# node-agent/CMakeLists.txt.
add_library(mb_backends STATIC
  ${CMAKE_CURRENT_LIST_DIR}/qmp_client.cc
  ${CMAKE_CURRENT_LIST_DIR}/qmp_hypervisor.cc
  ${CMAKE_CURRENT_LIST_DIR}/libvirt_hypervisor.cc
  ${CMAKE_CURRENT_LIST_DIR}/../vm_process_probe.cc)
target_include_directories(mb_backends PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(mb_backends PUBLIC
  mb_common
  protobuf::libprotobuf
  absl::status absl::statusor absl::strings absl::str_format absl::time
  absl::synchronization
  spdlog::spdlog
  PkgConfig::LIBVIRT)
mb_warnings(mb_backends)

if(TARGET mb_agent)
  target_link_libraries(mb_agent PUBLIC mb_backends)
  target_compile_definitions(mb_agent PUBLIC MB_HAVE_REAL_BACKENDS)
endif()

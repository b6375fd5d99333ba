# The crash test's control (docs/testing.md): a copy of bs_icbd.so built with
# ICBD_DURABILITY_CONTROL, where SYNCHRONIZE CACHE and FUA are no-ops (the LUN's
# engine is wrapped in tests/support/faulty_engine with drop_durability). It
# lives in its own module directory, is never installed, and exists only in
# test builds. integration.crash_test.durability_control{,_overlay_cache} run
# power-cut modes of the crash test against it and pass only when the crash
# test reports a lost durable write: proof that the crash test can fail.
set(ICBD_DURABILITY_CONTROL_DIR ${CMAKE_BINARY_DIR}/durability_control)

# blockd/io_engine.cpp compiled again with the switch; linked before libblockd,
# its make_io_engine is the one the module uses (the archive's copy of that
# object is then never pulled in).
add_library(bs_icbd_durability_control MODULE
  ${PROJECT_SOURCE_DIR}/tgt-backend/bs_icbd.c
  ${PROJECT_SOURCE_DIR}/blockd/io_engine.cpp
  ${PROJECT_SOURCE_DIR}/tests/support/faulty_engine.cpp)
add_dependencies(bs_icbd_durability_control tgt_version_check)
get_target_property(_icbd_module_includes bs_icbd INCLUDE_DIRECTORIES)
get_target_property(_icbd_module_defs bs_icbd COMPILE_DEFINITIONS)
get_target_property(_icbd_module_options bs_icbd COMPILE_OPTIONS)
get_target_property(_icbd_module_link_options bs_icbd LINK_OPTIONS)
target_include_directories(bs_icbd_durability_control PRIVATE ${_icbd_module_includes}
  ${PROJECT_SOURCE_DIR}/tests/support)
target_compile_definitions(bs_icbd_durability_control PRIVATE ${_icbd_module_defs} ICBD_DURABILITY_CONTROL)
target_compile_options(bs_icbd_durability_control PRIVATE ${_icbd_module_options})
target_link_options(bs_icbd_durability_control PRIVATE ${_icbd_module_link_options})
target_link_libraries(bs_icbd_durability_control PRIVATE blockd)
set_target_properties(bs_icbd_durability_control PROPERTIES PREFIX "" OUTPUT_NAME bs_icbd
  C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
  LIBRARY_OUTPUT_DIRECTORY ${ICBD_DURABILITY_CONTROL_DIR}/modules)
# TgtdInstance takes $ICBD_BUILD/modules/{bs_icbd.so,libicbd_tgt_preload.so}.
add_custom_command(TARGET bs_icbd_durability_control POST_BUILD
  COMMAND ${CMAKE_COMMAND} -E create_symlink $<TARGET_FILE:icbd_tgt_preload>
          ${ICBD_DURABILITY_CONTROL_DIR}/modules/libicbd_tgt_preload.so)
add_dependencies(bs_icbd_durability_control icbd_tgt_preload)
add_dependencies(crash_test bs_icbd_durability_control)

# Short: the first power cut already loses what SYNCHRONIZE CACHE "made
# durable". A raw LUN, and the desktops' configuration (an overlay behind a
# write-back cache, where the commits go no-op too).
foreach(mode power_cut power_cut_overlay_cache)
  string(REPLACE "power_cut" "durability_control" name ${mode})
  add_test(NAME integration.crash_test.${name}
    COMMAND crash_test --gtest_filter=Modes/CrashTest.AcknowledgedDurableWritesSurviveKill9/${mode})
  set_tests_properties(integration.crash_test.${name} PROPERTIES
    ENVIRONMENT "ICBD_BUILD=${ICBD_DURABILITY_CONTROL_DIR};ICBD_CRASH_ITERATIONS=5"
    PASS_REGULAR_EXPRESSION "LOST DURABLE WRITE"
    SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
    LABELS integration TIMEOUT 120)
endforeach()

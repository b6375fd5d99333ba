# Packaging of icbd-store (included from the top-level CMakeLists.txt):
# the build-time version header every tool prints with --version, man pages,
# docs, the targets.conf example, and the Debian package (CPack DEB generator;
# docs/packaging.md says why and how).

# --- version + git commit, regenerated at every build (rewritten only on change)
set(ICBD_GENERATED_DIR ${PROJECT_BINARY_DIR}/generated)
add_custom_target(icbd_build_version
  COMMAND ${CMAKE_COMMAND} -DSRC=${PROJECT_SOURCE_DIR} -DOUT=${ICBD_GENERATED_DIR}/icbd/build_version.hpp
          -DVERSION=${PROJECT_VERSION} -P ${PROJECT_SOURCE_DIR}/packaging/gen-version.cmake
  BYPRODUCTS ${ICBD_GENERATED_DIR}/icbd/build_version.hpp
  COMMENT "Version header with the git commit")
set(ICBD_PACKAGED_PROGRAMS blockd-daemon blockctl icbd-iscsi icbd-overlay icbd-replicate icbd-prefetch)
foreach(t IN LISTS ICBD_PACKAGED_PROGRAMS)
  if(TARGET ${t})
    add_dependencies(${t} icbd_build_version)
    target_include_directories(${t} PRIVATE ${ICBD_GENERATED_DIR})
  endif()
endforeach()

# --- man pages: Markdown in docs/man, made with pandoc (packaging/man-pages.cmake)
include(${PROJECT_SOURCE_DIR}/packaging/man-pages.cmake)

# --- docs and the (inactive) targets.conf example
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}
        FILES_MATCHING PATTERN "*.md" PATTERN "man" EXCLUDE)
install(FILES packaging/icbd-example.conf.example DESTINATION /etc/tgt/conf.d)

# --- the Debian package
# bs_icbd.so is ABI-coupled to the tgtd whose headers it was built with:
# pin exactly the installed tgt (scripts/check-tgt-version.sh checks the headers).
execute_process(COMMAND dpkg-query -W -f=\${Version} tgt
                OUTPUT_VARIABLE ICBD_TGT_DEB_VERSION RESULT_VARIABLE icbd_rc ERROR_QUIET)
if(NOT icbd_rc EQUAL 0 OR NOT ICBD_TGT_DEB_VERSION)
  message(WARNING "tgt is not installed (dpkg-query): the package cannot pin its tgt")
  set(ICBD_TGT_DEB_VERSION "0")
endif()

# Units as the package installs them: they name /usr/bin and /usr/sbin whatever
# this build's CMAKE_INSTALL_PREFIX is (the package's prefix is always /usr).
set(ICBD_BINDIR /usr/bin)
set(ICBD_SBINDIR /usr/sbin)
configure_file(systemd/icbd-replicate.service.in ${PROJECT_BINARY_DIR}/packaging/units/icbd-replicate.service @ONLY)
configure_file(systemd/blockd.service.in ${PROJECT_BINARY_DIR}/packaging/units/blockd.service @ONLY)
# The packaged units point at their manual pages (lintian:
# systemd-service-file-missing-documentation-key).
foreach(unit blockd:blockd.8 icbd-replicate:icbd-replicate.1)
  string(REPLACE ":" ";" u ${unit})
  list(GET u 0 name)
  list(GET u 1 page)
  string(REGEX REPLACE "^(.*)\\.([0-9])$" "man:\\1(\\2)" doc ${page})
  file(READ ${PROJECT_BINARY_DIR}/packaging/units/${name}.service text)
  string(REPLACE "[Unit]\n" "[Unit]\nDocumentation=${doc}\n" text "${text}")
  file(WRITE ${PROJECT_BINARY_DIR}/packaging/units/${name}.service "${text}")
endforeach()
configure_file(packaging/deb-stage.cmake.in ${PROJECT_BINARY_DIR}/packaging/deb-stage.cmake @ONLY)
file(WRITE ${PROJECT_BINARY_DIR}/packaging/debian/conffiles
"/etc/icbd/blockd-master.toml.example
/etc/icbd/blockd-replica.toml.example
/etc/icbd/icbd-replicate.conf.example
/etc/tgt/conf.d/icbd-example.conf.example
")
file(COPY packaging/postinst packaging/postrm DESTINATION ${PROJECT_BINARY_DIR}/packaging/debian
     FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME icbd-store)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_CONTACT "icbd-store maintainers <maintainers@users.noreply.b-seed-6751c4c5.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "io_uring backing store for tgt, image replication and node daemon")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "icbd-store serves desktop disk images over iSCSI from Debian's tgtd:
bs_icbd.so (bstype icbd: io_uring I/O, per-client copy-on-write overlays,
write-back caches), icbd-replicate (BTRFS image versions to cache servers),
blockd and blockctl (the node daemon and its command line), icbd-iscsi and
icbd-overlay (operator tools).")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE amd64)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "tgt (= ${ICBD_TGT_DEB_VERSION})")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_BINARY_DIR}/packaging/debian/conffiles
    ${PROJECT_BINARY_DIR}/packaging/debian/postinst
    ${PROJECT_BINARY_DIR}/packaging/debian/postrm)
set(CPACK_PRE_BUILD_SCRIPTS ${PROJECT_BINARY_DIR}/packaging/deb-stage.cmake)
include(CPack)

# What a package needs built; `deb` builds only that, then the package (the
# `package` target would build everything, tests and benchmarks included).
add_custom_target(icbd_package_inputs)
foreach(t IN LISTS ICBD_PACKAGED_PROGRAMS ITEMS bs_icbd icbd_man_pages)
  if(TARGET ${t})
    add_dependencies(icbd_package_inputs ${t})
  endif()
endforeach()
add_custom_target(deb
  COMMAND cpack -G DEB --config ${PROJECT_BINARY_DIR}/CPackConfig.cmake -B ${PROJECT_BINARY_DIR}/packages
  WORKING_DIRECTORY ${PROJECT_BINARY_DIR} USES_TERMINAL
  COMMENT "Building packages/icbd-store_${PROJECT_VERSION}_amd64.deb")
add_dependencies(deb icbd_package_inputs)

# Man pages (included from packaging/package.cmake): one Markdown source per
# page in docs/man/NAME.SECTION.md, made into roff by pandoc at build time.
# docs/man/man.lua pulls the sections a page shares with docs/*.md (bsopts,
# blockd's configuration, targets.conf, /metrics) from those files, so each
# text has one source. Output: build/man/NAME.SECTION (for tests) and
# NAME.SECTION.gz (gzip -9n: reproducible), installed into man<SECTION>.
# Every docs/man/*.SECTION.md is a page: a new one needs no line here
# (tests/package/CMakeLists.txt names the program each command's page documents).
file(GLOB icbd_man_sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/docs/man/*.[1-8].md)
set(ICBD_MAN_PAGES)
foreach(src IN LISTS icbd_man_sources)
  get_filename_component(page ${src} NAME)
  string(REGEX REPLACE "\\.md$" "" page ${page})
  list(APPEND ICBD_MAN_PAGES ${page})
endforeach()
# What the pages include (man.lua); a change there remakes every page.
set(ICBD_MAN_INCLUDED docs/bsopts.md docs/blockd.md docs/packaging.md docs/metrics.md)

find_program(ICBD_PANDOC pandoc)
set(ICBD_MAN_DIR ${PROJECT_BINARY_DIR}/man)
set(icbd_man_outputs)
set(icbd_man_deps ${PROJECT_SOURCE_DIR}/docs/man/man.lua)
foreach(d IN LISTS ICBD_MAN_INCLUDED)
  list(APPEND icbd_man_deps ${PROJECT_SOURCE_DIR}/${d})
endforeach()
foreach(page IN LISTS ICBD_MAN_PAGES)
  string(REGEX REPLACE ".*\\.([0-9])$" "\\1" section ${page})
  set(src ${PROJECT_SOURCE_DIR}/docs/man/${page}.md)
  set(roff ${ICBD_MAN_DIR}/${page})
  if(ICBD_PANDOC)
    # -smart: quotes and dashes stay ASCII (options and literal values are typed).
    add_custom_command(OUTPUT ${roff} ${roff}.gz
      COMMAND ${CMAKE_COMMAND} -E make_directory ${ICBD_MAN_DIR}
      COMMAND ${ICBD_PANDOC} --standalone --from markdown-smart --to man
              --lua-filter ${PROJECT_SOURCE_DIR}/docs/man/man.lua
              "--metadata=footer=icbd-store ${PROJECT_VERSION}"
              --output ${roff} ${src}
      COMMAND sh -c "gzip -9n -c '${roff}' > '${roff}.gz'"
      DEPENDS ${src} ${icbd_man_deps}
      WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}/docs/man
      COMMENT "Man page ${page} (pandoc)" VERBATIM)
  else()
    add_custom_command(OUTPUT ${roff} ${roff}.gz
      COMMAND ${CMAKE_COMMAND} -E echo "man page ${page}: pandoc is not installed (scripts/install-deps.sh installs it)"
      COMMAND false
      VERBATIM)
  endif()
  list(APPEND icbd_man_outputs ${roff} ${roff}.gz)
  install(FILES ${roff}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
endforeach()
if(NOT ICBD_PANDOC)
  message(WARNING "pandoc not found: the man pages (and the package) cannot be built; scripts/install-deps.sh installs it")
endif()
add_custom_target(icbd_man_pages ALL DEPENDS ${icbd_man_outputs})

# Install rules: the library (shared and, with CPOOL_INSTALL_STATIC, static),
# the public headers of what was built, a pkg-config file and a CMake
# package. Included from the top-level CMakeLists.txt when CPOOL_INSTALL.

include(CMakePackageConfigHelpers)

set(cpool_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/cpool)
set(cpool_install_targets ${cpool_main})
if(CPOOL_BUILD_SHARED AND CPOOL_INSTALL_STATIC)
  list(APPEND cpool_install_targets cpool_static)
endif()
install(TARGETS ${cpool_install_targets} EXPORT cpoolTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# A connector built out leaves its header out too: its functions are not in
# the library.
install(FILES ${cpool_public_headers} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/cpool)

install(EXPORT cpoolTargets NAMESPACE cpool:: DESTINATION ${cpool_cmake_dir})
set(CPOOL_CONNECTORS "${cpool_connectors}")
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/cpoolConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cpoolConfig.cmake INSTALL_DESTINATION ${cpool_cmake_dir})
# 0.x: a minor release may break the API (docs/abi.md), so only the same
# minor version is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cpoolConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/cpoolConfig.cmake
              ${PROJECT_BINARY_DIR}/cpoolConfigVersion.cmake
        DESTINATION ${cpool_cmake_dir})

# pkg-config. The prefix is found from the file's own place (${pcfiledir}),
# so `cmake --install --prefix P` and a moved tree both give right paths.
set(cpool_pc_dir ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(IS_ABSOLUTE "${cpool_pc_dir}")
  message(FATAL_ERROR "cpool: CMAKE_INSTALL_LIBDIR must be relative to the prefix")
endif()
file(RELATIVE_PATH cpool_pc_up /p/${cpool_pc_dir} /p)
string(REGEX REPLACE "/$" "" cpool_pc_up "${cpool_pc_up}")
set(CPOOL_PC_PREFIX "\${pcfiledir}/${cpool_pc_up}")
string(REPLACE ";" " " CPOOL_PC_CONNECTORS "${cpool_connectors}")
# The connectors' client libraries go in as the flags they were built with,
# not as Requires.private: with --static, pkg-config would then pull their
# own private dependencies, and Debian's libpq.pc names archives that only
# the server's development package has (-lpgcommon -lpgport) and Kerberos.
# A static libcpool links the client libraries as they are installed,
# shared or static.
set(CPOOL_PC_LIBS_PRIVATE "${cpool_pc_libs}")
set(CPOOL_PC_CFLAGS "${cpool_pc_cflags}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/cpool.pc.in ${PROJECT_BINARY_DIR}/cpool.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/cpool.pc DESTINATION ${cpool_pc_dir})

install(FILES ${PROJECT_SOURCE_DIR}/LICENSE ${PROJECT_SOURCE_DIR}/CHANGELOG.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})

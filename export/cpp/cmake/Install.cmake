# cmake --install: the library, its public headers (not src/backend.hpp), pkd-classify, and a package config so an
# app does find_package(promptkd_edge) and links promptkd_edge::promptkd_edge.
set_target_properties(pkd-classify PROPERTIES INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")
install(TARGETS promptkd_edge EXPORT promptkd_edgeTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS pkd-classify RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/promptkd_edge DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.hpp")
set(PKD_CONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/promptkd_edge)
install(EXPORT promptkd_edgeTargets NAMESPACE promptkd_edge:: DESTINATION ${PKD_CONFIG_DIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/promptkd_edgeConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/promptkd_edgeConfig.cmake INSTALL_DESTINATION ${PKD_CONFIG_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/promptkd_edgeConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/promptkd_edgeConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/promptkd_edgeConfigVersion.cmake DESTINATION ${PKD_CONFIG_DIR})
if(PKD_WITH_TENSORRT)  # for the static library's find_dependency(TensorRT)
  install(FILES ${CMAKE_CURRENT_LIST_DIR}/FindTensorRT.cmake DESTINATION ${PKD_CONFIG_DIR})
endif()

# The TensorRT backend of promptkd_edge, included by export/cpp/CMakeLists.txt when PKD_WITH_TENSORRT=ON (after the
# library target `promptkd_edge` is defined). On a Jetson (JetPack 6) nothing needs setting: TensorRT is found in
# /usr/include/aarch64-linux-gnu and the CUDA runtime in /usr/local/cuda. Elsewhere: -DTensorRT_ROOT=<TensorRT folder>
# and, where the CUDA runtime is not in /usr/local/cuda, -DPKD_CUDA_ROOTS=<folders> (see cmake/FindTensorRT.cmake).
list(APPEND CMAKE_MODULE_PATH "${CMAKE_CURRENT_LIST_DIR}")
find_package(TensorRT 10 REQUIRED)  # 10.x and 11.x: named I/O tensors, Dims64, enqueueV3
message(STATUS "promptkd_edge TensorRT backend: TensorRT ${TensorRT_VERSION} (${TensorRT_INCLUDE_DIR}, "
               "${TensorRT_LIBRARY}), CUDA runtime ${TensorRT_CUDART_VERSION} (${TensorRT_CUDART_LIBRARY})")
target_sources(promptkd_edge PRIVATE "${CMAKE_CURRENT_LIST_DIR}/../src/tensorrt_backend.cpp")
target_link_libraries(promptkd_edge PRIVATE TensorRT::nvinfer)
target_compile_definitions(promptkd_edge PRIVATE PKD_HAVE_TENSORRT)

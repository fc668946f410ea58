# FindTensorRT: TensorRT's C++ runtime (NvInfer.h, libnvinfer) and the CUDA runtime its headers include
# (NvInferRuntimeBase.h includes <cuda_runtime_api.h>).
#
# Where it looks, first to last:
#   TensorRT_ROOT (CMake variable or environment; a TensorRT tar/zip or any prefix), CMAKE_PREFIX_PATH, the system.
#   Multiarch layouts are found too: JetPack installs /usr/include/aarch64-linux-gnu/NvInfer.h and
#   /usr/lib/aarch64-linux-gnu/libnvinfer.so (CMake searches <prefix>/include/<arch> and <prefix>/lib/<arch>).
#   CUDA runtime: PKD_CUDA_ROOTS (a list, e.g. the PyPI wheels' nvidia/cuda_runtime;nvidia/cuda_nvcc), then
#   CUDAToolkit_ROOT, CUDA_HOME / CUDA_PATH, /usr/local/cuda (JetPack), the system. Explicit searches, not
#   FindCUDAToolkit: with wheel folders it takes its version and headers from whatever nvcc is on PATH (mixed installs).
#
# Defines: TensorRT_FOUND, TensorRT_VERSION ("10.3.0"), TensorRT_INCLUDE_DIR, TensorRT_LIBRARY,
#   TensorRT_CUDART_INCLUDE_DIRS, TensorRT_CUDART_LIBRARY, TensorRT_CUDART_VERSION ("12.6"), and the imported target
#   TensorRT::nvinfer (its include folders are SYSTEM, so the headers' own warnings stay out of -Wall builds; it links
#   the CUDA runtime).

set(_trt_roots ${TensorRT_ROOT} $ENV{TensorRT_ROOT})
find_path(TensorRT_INCLUDE_DIR NvInfer.h HINTS ${_trt_roots} PATH_SUFFIXES include)
find_library(TensorRT_LIBRARY nvinfer HINTS ${_trt_roots} PATH_SUFFIXES lib lib64)

unset(TensorRT_VERSION)
if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(READ "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_version_h)
  foreach(_part MAJOR MINOR PATCH)
    # 10.x: "#define NV_TENSORRT_MAJOR 10"; 11.x: "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE" and
    # "#define TRT_MAJOR_ENTERPRISE 11".
    if(_trt_version_h MATCHES "#define NV_TENSORRT_${_part} ([0-9]+)")
      set(_trt_${_part} "${CMAKE_MATCH_1}")
    elseif(_trt_version_h MATCHES "#define TRT_${_part}_ENTERPRISE ([0-9]+)")
      set(_trt_${_part} "${CMAKE_MATCH_1}")
    else()
      set(_trt_${_part} "")
    endif()
  endforeach()
  if(NOT _trt_MAJOR STREQUAL "" AND NOT _trt_MINOR STREQUAL "" AND NOT _trt_PATCH STREQUAL "")
    set(TensorRT_VERSION "${_trt_MAJOR}.${_trt_MINOR}.${_trt_PATCH}")
  endif()
endif()

# The CUDA runtime: headers (cuda_runtime_api.h, and crt/host_defines.h which it includes: the wheels ship them in two
# packages), and libcudart (the wheels ship only libcudart.so.N).
set(_cuda_roots ${PKD_CUDA_ROOTS} ${CUDAToolkit_ROOT} $ENV{CUDAToolkit_ROOT} $ENV{CUDA_HOME} $ENV{CUDA_PATH}
    /usr/local/cuda)
set(_cuda_suffixes include targets/${CMAKE_SYSTEM_PROCESSOR}-linux/include)
find_path(TensorRT_CUDART_INCLUDE_DIR cuda_runtime_api.h HINTS ${_cuda_roots} PATH_SUFFIXES ${_cuda_suffixes})
if(TensorRT_CUDART_INCLUDE_DIR)
  # crt/ beside cuda_runtime_api.h first (a toolkit), then the roots: never another installation's crt/ when one of
  # the roots has it.
  find_path(TensorRT_CUDA_CRT_INCLUDE_DIR crt/host_defines.h HINTS ${TensorRT_CUDART_INCLUDE_DIR} ${_cuda_roots}
            PATH_SUFFIXES ${_cuda_suffixes} NO_DEFAULT_PATH)
  find_path(TensorRT_CUDA_CRT_INCLUDE_DIR crt/host_defines.h)
  get_filename_component(_cudart_prefix "${TensorRT_CUDART_INCLUDE_DIR}" DIRECTORY)
  find_library(TensorRT_CUDART_LIBRARY NAMES cudart libcudart.so.12 libcudart.so.13
               HINTS ${_cudart_prefix} PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
  find_library(TensorRT_CUDART_LIBRARY NAMES cudart libcudart.so.12 libcudart.so.13 HINTS ${_cuda_roots}
               PATH_SUFFIXES lib lib64 targets/${CMAKE_SYSTEM_PROCESSOR}-linux/lib)
  file(STRINGS "${TensorRT_CUDART_INCLUDE_DIR}/cuda_runtime_api.h" _cudart_line REGEX "#define CUDART_VERSION +[0-9]+")
  if(_cudart_line MATCHES "([0-9]+)$")
    math(EXPR _cudart_major "${CMAKE_MATCH_1} / 1000")
    math(EXPR _cudart_minor "(${CMAKE_MATCH_1} % 1000) / 10")
    set(TensorRT_CUDART_VERSION "${_cudart_major}.${_cudart_minor}")
  endif()
endif()
set(TensorRT_CUDART_INCLUDE_DIRS ${TensorRT_CUDART_INCLUDE_DIR} ${TensorRT_CUDA_CRT_INCLUDE_DIR})
list(REMOVE_DUPLICATES TensorRT_CUDART_INCLUDE_DIRS)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
  REQUIRED_VARS TensorRT_INCLUDE_DIR TensorRT_LIBRARY TensorRT_CUDART_INCLUDE_DIR TensorRT_CUDA_CRT_INCLUDE_DIR
                TensorRT_CUDART_LIBRARY
  VERSION_VAR TensorRT_VERSION
  REASON_FAILURE_MESSAGE "set TensorRT_ROOT to a TensorRT installation (JetPack: found in /usr without it) and, \
where the CUDA runtime is not in /usr/local/cuda, PKD_CUDA_ROOTS to the folders holding include/cuda_runtime_api.h, \
include/crt/host_defines.h and lib/libcudart.so*")

if(TensorRT_FOUND AND NOT TARGET TensorRT::nvinfer)
  add_library(TensorRT::nvinfer UNKNOWN IMPORTED)
  set_target_properties(TensorRT::nvinfer PROPERTIES
    IMPORTED_LOCATION "${TensorRT_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR};${TensorRT_CUDART_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "${TensorRT_CUDART_LIBRARY}")
endif()
mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_LIBRARY TensorRT_CUDART_INCLUDE_DIR TensorRT_CUDA_CRT_INCLUDE_DIR
                 TensorRT_CUDART_LIBRARY)

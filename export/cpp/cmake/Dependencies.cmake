# What the core needs, found the conventional way (Debian/Ubuntu: apt-get install nlohmann-json3-dev libstb-dev
# libjpeg62-turbo-dev (Ubuntu: libjpeg-turbo8-dev) libssl-dev); OpenVINO from the `openvino` wheel
# (-DOpenVINO_DIR=$(python -c "from openvino.utils import get_cmake_path; print(get_cmake_path())")).
set(PKD_APT_PACKAGES "nlohmann-json3-dev libstb-dev libjpeg62-turbo-dev libssl-dev")
find_package(Threads REQUIRED)
find_package(nlohmann_json 3.2 QUIET)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "promptkd_edge needs nlohmann_json (JSON); install: apt-get install ${PKD_APT_PACKAGES}")
endif()
find_package(JPEG QUIET)
if(NOT JPEG_FOUND)
  message(FATAL_ERROR "promptkd_edge needs libjpeg(-turbo) (JPEG decoding); install: apt-get install ${PKD_APT_PACKAGES}")
endif()
find_package(OpenSSL QUIET COMPONENTS Crypto)
if(NOT OpenSSL_FOUND)
  message(FATAL_ERROR "promptkd_edge needs OpenSSL's libcrypto (sha256); install: apt-get install ${PKD_APT_PACKAGES}")
endif()
find_path(STB_INCLUDE_DIR stb_image.h PATH_SUFFIXES stb)
if(NOT STB_INCLUDE_DIR)
  message(FATAL_ERROR "promptkd_edge needs stb_image.h (PNG/BMP/GIF/PPM decoding); install: apt-get install ${PKD_APT_PACKAGES}")
endif()
if(PKD_WITH_OPENVINO)
  # No version: OpenVINOConfig-version.cmake accepts only the same year (2024.x refuses 2026.x).
  find_package(OpenVINO QUIET COMPONENTS Runtime)
  if(NOT OpenVINO_FOUND)
    message(FATAL_ERROR "promptkd_edge's OpenVINO backend needs OpenVINO's C++ API: pip install openvino, then "
            "-DOpenVINO_DIR=$(python -c \"from openvino.utils import get_cmake_path; print(get_cmake_path())\") "
            "(or -DPKD_WITH_OPENVINO=OFF)")
  endif()
endif()

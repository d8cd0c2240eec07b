# CUDA backend switch. AUTO: build it when nvcc is found; ON: require it; OFF: never.
# Sets PYRESA_HAVE_CUDA and, when ON, the static library pyresa_cuda (native/backends/cuda/*.cu).
set(PYRESA_HAVE_CUDA OFF)
string(TOUPPER "${PYRESA_CUDA}" _pyresa_cuda)
if(_pyresa_cuda STREQUAL "OFF")
  message(STATUS "pyresa: CUDA backend off (PYRESA_CUDA=OFF)")
  return()
endif()
file(GLOB_RECURSE PYRESA_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/native/backends/cuda/*.cu)
if(NOT PYRESA_CUDA_SOURCES)
  if(_pyresa_cuda STREQUAL "ON")
    message(FATAL_ERROR "pyresa: PYRESA_CUDA=ON but there are no CUDA sources")
  endif()
  message(STATUS "pyresa: no CUDA sources; CPU-only build")
  return()
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(_pyresa_cuda STREQUAL "ON")
    message(FATAL_ERROR "pyresa: PYRESA_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
  message(STATUS "pyresa: nvcc not found; CPU-only build")
  return()
endif()

# Architectures: Ampere (80, 86), Ada (89) and Hopper (90) by default. The kernels need sm_80+
# (mma.sync f16, cp.async). Override with -DCMAKE_CUDA_ARCHITECTURES=90 (or the environment's
# CUDAARCHS) for a faster build on one machine.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  if(DEFINED ENV{CUDAARCHS} AND NOT "$ENV{CUDAARCHS}" STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES "$ENV{CUDAARCHS}")
  else()
    set(CMAKE_CUDA_ARCHITECTURES "80;86;89;90")
  endif()
endif()
# Hopper as 90a (its arch-specific instructions: wgmma in attention_wgmma.cu); the sm_90a cubin runs
# on compute capability 9.0 only, which is what 90 targets. Other architectures keep a stub of that
# kernel (attention_wgmma_available() is false there).
# (CMake reads the "a" suffix from 3.25 on; older ones keep 90 and the stub.)
# "90" also carried compute_90 PTX, which newer GPUs (Blackwell) compile at load time; 90a's PTX
# does not run there, so compute_90 PTX is kept beside it (the wgmma kernel is a stub in it).
if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.25)
  list(FIND CMAKE_CUDA_ARCHITECTURES "90" _pyresa_has_90)
  list(TRANSFORM CMAKE_CUDA_ARCHITECTURES REPLACE "^90$" "90a-real")
  list(TRANSFORM CMAKE_CUDA_ARCHITECTURES REPLACE "^90-real$" "90a-real")
  if(NOT _pyresa_has_90 EQUAL -1)
    list(APPEND CMAKE_CUDA_ARCHITECTURES "90-virtual")
  endif()
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

add_library(pyresa_cuda STATIC ${PYRESA_CUDA_SOURCES})
target_include_directories(pyresa_cuda PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/native)
set_target_properties(pyresa_cuda PROPERTIES POSITION_INDEPENDENT_CODE ON CUDA_RUNTIME_LIBRARY Static)
# No fast-math: the quantizers and dequantizers must round exactly as the CPU backend does.
target_compile_options(pyresa_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -Xptxas=-warn-spills>)
target_link_libraries(pyresa_cuda PUBLIC pyresa_core CUDA::cudart_static)
set(PYRESA_HAVE_CUDA ON)
message(STATUS "pyresa: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")

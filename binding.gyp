# node-gyp fallback for machines without CMake: the CPU engine (no CUDA), its addon and
# the C++ tests, from the same source list as CMakeLists.txt (native/sources.txt, expanded
# by scripts/gyp-sources.mjs). Outputs: build/Release/expertweave.node and
# build/Release/ew_native_tests. .ci/run checks this build (scripts/check-node-gyp.sh).
{
  'variables': {
    'ew_version': '<!(node -p "require(\'./package.json\').version")',
  },
  'target_defaults': {
    'cflags!': ['-fno-exceptions'],
    'cflags_cc!': ['-fno-exceptions', '-fno-rtti', '-std=gnu++14', '-std=gnu++17'],
    'cflags_cc': ['-std=c++17', '-O3', '-Wall', '-Wextra', '-Wno-unused-parameter'],
    'include_dirs': ['native/src'],
  },
  'targets': [
    # The *_<isa>.cc kernels, each compiled for its instruction set and dispatched at run
    # time (kernels/cpu/cpu_paths.cc), as CMakeLists.txt does.
    {
      'target_name': 'ew_avx2',
      'type': 'static_library',
      'conditions': [
        ['target_arch=="x64"', {
          'sources': ['<!@(node scripts/gyp-sources.mjs avx2)'],
          'cflags_cc': ['-mavx2', '-mfma', '-mf16c'],
        }],
      ],
    },
    {
      'target_name': 'ew_avx512',
      'type': 'static_library',
      'conditions': [
        ['target_arch=="x64"', {
          'sources': ['<!@(node scripts/gyp-sources.mjs avx512)'],
          'cflags_cc': ['-mavx2', '-mfma', '-mf16c', '-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq'],
        }],
      ],
    },
    {
      'target_name': 'ew_avx512bf16',
      'type': 'static_library',
      'conditions': [
        ['target_arch=="x64"', {
          'sources': ['<!@(node scripts/gyp-sources.mjs avx512bf16)'],
          'cflags_cc': ['-mavx2', '-mfma', '-mf16c', '-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx512bf16'],
        }],
      ],
    },
    {
      'target_name': 'ew_amx',
      'type': 'static_library',
      'conditions': [
        ['target_arch=="x64"', {
          'sources': ['<!@(node scripts/gyp-sources.mjs amx)'],
          'cflags_cc': ['-mavx2', '-mfma', '-mf16c', '-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx512bf16',
                        '-mamx-tile', '-mamx-bf16'],
        }],
      ],
    },
    {
      # util, memory, kernels and engine: what CMake builds as ew_util ... ew_engine.
      'target_name': 'ew_core',
      'type': 'static_library',
      'dependencies': ['ew_avx2', 'ew_avx512', 'ew_avx512bf16', 'ew_amx'],
      'sources': ['<!@(node scripts/gyp-sources.mjs core)'],
      'conditions': [
        ['target_arch=="x64"', { 'defines': ['EW_HAVE_AVX2_KERNELS=1', 'EW_HAVE_AVX512_KERNELS=1', 'EW_HAVE_AMX_KERNELS=1'] }],
      ],
      'link_settings': { 'libraries': ['-lpthread', '-ldl'] },
    },
    {
      'target_name': 'expertweave',
      'dependencies': ['ew_core'],
      'sources': ['<!@(node scripts/gyp-sources.mjs addon)'],
      'include_dirs': ['<!(node -p "require(\'node-addon-api\').include_dir")'],
      'defines': ['NAPI_VERSION=8', 'NODE_ADDON_API_DISABLE_DEPRECATED', 'NAPI_CPP_EXCEPTIONS', 'NODE_ADDON_API_CPP_EXCEPTIONS_ALL', 'EW_VERSION="<(ew_version)"'],
    },
    {
      'target_name': 'ew_native_tests',
      'type': 'executable',
      'dependencies': ['ew_core'],
      'sources': ['<!@(node scripts/gyp-sources.mjs tests)'],
    },
  ],
}

# node-gyp fallback for machines without CMake: the CPU engine only (no CUDA, no
# C++ tests), same sources as CMakeLists.txt. Output: build/Release/expertweave.node.
{
  'variables': {
    'ew_version': '<!(node -p "require(\'./package.json\').version")',
  },
  'target_defaults': {
    'cflags!': ['-fno-exceptions'],
    'cflags_cc!': ['-fno-exceptions', '-fno-rtti', '-std=gnu++14', '-std=gnu++17'],
    'cflags_cc': ['-std=c++17', '-O3', '-Wall', '-Wextra', '-Wno-unused-parameter'],
    'include_dirs': ['native/src'],
    'conditions': [
      ['target_arch=="x64"', { 'defines': ['EW_HAVE_AVX2_KERNELS=1'] }],
    ],
  },
  'targets': [
    {
      # The *_avx2.cc kernels, compiled for AVX2/FMA/F16C and dispatched at run time.
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
      'target_name': 'expertweave',
      'dependencies': ['ew_avx2'],
      'sources': ['<!@(node scripts/gyp-sources.mjs core)', '<!@(node scripts/gyp-sources.mjs addon)'],
      'include_dirs': ['<!(node -p "require(\'node-addon-api\').include_dir")'],
      'defines': ['NAPI_VERSION=8', 'NODE_ADDON_API_DISABLE_DEPRECATED', 'NAPI_CPP_EXCEPTIONS', 'NODE_ADDON_API_CPP_EXCEPTIONS_ALL', 'EW_VERSION="<(ew_version)"'],
      'libraries': ['-lpthread', '-ldl'],
    },
  ],
}

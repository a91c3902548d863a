// Device memory (cudaMalloc) for an Arena (memory/arena.h): the CUDA runner's scratch.
#pragma once
#include <memory>

#include "memory/arena.h"

namespace ew {

std::unique_ptr<ArenaMemory> device_arena_memory();

}  // namespace ew

// Test-only CUDA emulation (tests/emulated): stands in for the toolkit header of this name.
#pragma once
#include "lro_emu.h"

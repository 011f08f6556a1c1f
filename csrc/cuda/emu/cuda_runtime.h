// Emulation stand-in (see ligo_emu.h).
#pragma once
#include "ligo_emu.h"

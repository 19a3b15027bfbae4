#pragma once
// Umbrella header of the cusense C++ API.
#include <cusense/backend.hpp>
#include <cusense/error.hpp>
#include <cusense/pipeline.hpp>
#include <cusense/table.hpp>
#include <cusense/types.hpp>

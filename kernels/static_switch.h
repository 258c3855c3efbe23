#pragma once
// Turns a runtime flag into a compile-time constant for the lambda body:
//   BOOL_SWITCH(params.dt_softplus, kSoftplus, [&] { launch<kSoftplus>(...); });
#define BOOL_SWITCH(COND, CONST_NAME, ...)      \
  [&] {                                         \
    if (COND) {                                 \
      constexpr bool CONST_NAME = true;         \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr bool CONST_NAME = false;        \
      return __VA_ARGS__();                     \
    }                                           \
  }()

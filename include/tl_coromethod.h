/* tl_coromethod.h - CoroutineMethod: a C method of the loop that
 * introspects as asyncio's coroutine function of the same name
 * (loop/coromethod.c). tonio_loop/_loop.py wraps the loop's C methods that
 * asyncio defines with `async def`. */
#ifndef TL_COROMETHOD_H
#define TL_COROMETHOD_H

#include "tl_common.h"

extern PyType_Spec tl_coromethod_spec;

#endif

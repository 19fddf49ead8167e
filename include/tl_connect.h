/* tl_connect.h - loop.create_connection(): numeric addresses without options
 * connect in C (connect.c), everything else goes to asyncio's own code. */
#ifndef TL_CONNECT_H
#define TL_CONNECT_H

#include "tl_common.h"

extern PyMethodDef tl_connect_loop_methods[];

#endif

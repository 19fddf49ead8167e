/* tl_tcp.h - loop.create_connection(): numeric addresses without options
 * connect in C (tcp.c), everything else goes to asyncio's own code. */
#ifndef TL_TCP_H
#define TL_TCP_H

#include "tl_common.h"

extern PyMethodDef tl_tcp_loop_methods[];

#endif

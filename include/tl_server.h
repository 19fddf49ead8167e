/* tl_server.h - accepting connections for asyncio.Server: the loop's
 * _start_serving() registers a Listener (a callable run as the reader of the
 * listening socket) that accepts in C and makes transports directly. */
#ifndef TL_SERVER_H
#define TL_SERVER_H

#include "tl_common.h"

int tl_server_init_module(PyObject *module, tl_state *st);

extern PyMethodDef tl_server_loop_methods[];

#endif

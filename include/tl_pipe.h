/* tl_pipe.h - the loop's pipe transport factories
 * (_make_read_pipe_transport/_make_write_pipe_transport). The C API to make
 * one on an fd is tl_pipe_transport_new() in tl_stream.h. */
#ifndef TL_PIPE_H
#define TL_PIPE_H

#include "tl_common.h"

extern PyMethodDef tl_pipe_loop_methods[];

#endif

/* tl_dns.h - name resolution for the loop.
 *
 * loop.getaddrinfo()/getnameinfo() answer numeric hosts and ports on the
 * spot, with no thread at all; only real names go to the resolver, in the
 * default executor as asyncio does (a cancelled lookup there is dropped
 * from the executor's queue, or finishes in its thread and is discarded:
 * nothing runs unbounded). The coroutines live in tonio_loop/_loop.py.
 */
#ifndef TL_DNS_H
#define TL_DNS_H

#include "tl_common.h"

extern PyMethodDef tl_dns_loop_methods[];

#endif

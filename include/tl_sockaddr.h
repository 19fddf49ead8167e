/* tl_sockaddr.h - socket addresses between the kernel's form and Python's.
 *
 * Python's socket module turns a struct sockaddr into ('host', port) and
 * friends; the fast paths (accept, transports' peername/sockname) get raw
 * addresses from the kernel and convert them only when asked, the way the
 * socket module would.
 */
#ifndef TL_SOCKADDR_H
#define TL_SOCKADDR_H

#include "tl_common.h"
#include <sys/socket.h>

/* What socket.getsockname() would return for this address. */
PyObject *tl_sockaddr_to_py(const struct sockaddr *sa, socklen_t len);

/* Whether `host` (str or bytes) is an IPv4 or IPv6 literal that needs no
 * resolver. -1 with an exception only for a failed conversion. */
int tl_is_numeric_host(PyObject *host);

#endif

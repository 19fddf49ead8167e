/* tl_tls.h - TLS over any stream transport, driven from C.
 *
 * One object, SSLTransport, plays both roles asyncio splits between
 * sslproto.SSLProtocol and _SSLProtocolTransport: it is the protocol of the
 * transport below (the ciphertext side) and the transport the application
 * protocol sees (the plaintext side). Its state machine is sslproto.py's,
 * line by line: the same states, callbacks in the same order and the same
 * iterations, the same messages and exception types.
 *
 * The user's ssl.SSLContext stays the interface: the TLS engine is the
 * ssl.SSLObject that context.wrap_bio() makes over two ssl.MemoryBIOs, and
 * 'ssl_object' is that object. When it is a plain ssl.SSLObject we call
 * the C methods of the _ssl object it wraps directly (method descriptors,
 * vectorcall): no Python frame per record. Ciphertext goes from the
 * transport's read straight into the incoming BIO, plaintext is decrypted
 * straight into the bytes object data_received() gets, and reads stop when
 * the BIO and the SSL object have nothing left instead of provoking an
 * SSLWantReadError each time.
 *
 * Our own stream transports feed it without a Python call per read (the
 * sink hook of tl_stream.h); any other transport (start_tls over a foreign
 * transport, TLS over TLS) drives it through its protocol methods.
 */
#ifndef TL_TLS_H
#define TL_TLS_H

#include "tl_common.h"
#include "tl_loop.h"

/* A new SSLTransport, as sslproto.SSLProtocol(loop, app_protocol,
 * sslcontext, waiter, server_side, server_hostname, call_connection_made,
 * ssl_handshake_timeout, ssl_shutdown_timeout) makes it. NULL arguments mean
 * None / the defaults. With accepting set (and no waiter) it behaves as
 * asyncio's _accept_connection2 around it would: a failed handshake closes
 * it, and debug mode reports the failure. */
PyObject *tl_tls_new(tl_loop *loop, PyObject *app_protocol, PyObject *sslcontext,
                     PyObject *waiter, int server_side, PyObject *server_hostname,
                     int call_connection_made, PyObject *handshake_timeout,
                     PyObject *shutdown_timeout, int accepting);

int tl_tls_init_module(PyObject *module, tl_state *st);
int tl_tls_traverse_state(tl_state *st, visitproc visit, void *arg);
void tl_tls_clear_state(tl_state *st);

extern PyMethodDef tl_tls_loop_methods[];

#endif

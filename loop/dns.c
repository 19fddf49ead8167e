/* dns.c - the resolver's fast path: numeric hosts and ports need no lookup,
 * so getaddrinfo() answers them at once in the loop's thread. Python's own
 * socket.getaddrinfo builds the answer (looked up on every call, so what
 * tests patch still applies), guaranteed by AI_NUMERICHOST/AI_NUMERICSERV
 * never to touch the network or block.
 */
#include <netdb.h>

#include "tl_dns.h"
#include "tl_loop.h"
#include "tl_sockaddr.h"

/* A port getaddrinfo can take without reading /etc/services. */
static int numeric_port(PyObject *port)
{
    if (port == Py_None || PyLong_Check(port))
        return 1;
    const char *s;
    Py_ssize_t n;
    if (PyUnicode_Check(port)) {
        s = PyUnicode_AsUTF8AndSize(port, &n);
        if (s == NULL) {
            PyErr_Clear();
            return 0;
        }
    } else if (PyBytes_Check(port)) {
        s = PyBytes_AS_STRING(port);
        n = PyBytes_GET_SIZE(port);
    } else {
        return 0;
    }
    if (n == 0 || n > 5)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* loop._getaddrinfo_numeric(host, port, family, type, proto, flags): the
 * answer for numeric hosts and ports, or None when a resolver is needed. */
static PyObject *loop_getaddrinfo_numeric(tl_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    TL_UNUSED(loop);
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "_getaddrinfo_numeric() takes 6 arguments");
        return NULL;
    }
    PyObject *host = args[0], *port = args[1];
    long flags = PyLong_Check(args[5]) ? PyLong_AsLong(args[5]) : -1;
    if (flags == -1) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    /* a canonical name is the resolver's answer, even for an address */
    if (flags & AI_CANONNAME)
        Py_RETURN_NONE;
    if (host != Py_None) {
        int numeric = tl_is_numeric_host(host);
        if (numeric <= 0) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    if (!numeric_port(port))
        Py_RETURN_NONE;
    PyObject *fn = tl_import_attr("socket", "getaddrinfo");
    if (fn == NULL)
        return NULL;
    PyObject *numflags = PyLong_FromLong(flags | AI_NUMERICHOST | AI_NUMERICSERV);
    PyObject *r = NULL;
    if (numflags != NULL) {
        PyObject *argv[6] = {host, port, args[2], args[3], args[4], numflags};
        r = PyObject_Vectorcall(fn, argv, 6, NULL);
        Py_DECREF(numflags);
    }
    Py_DECREF(fn);
    return r;
}

/* loop._getnameinfo_numeric(sockaddr, flags): asked for numbers only, no
 * lookup happens; None otherwise. */
static PyObject *loop_getnameinfo_numeric(tl_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    TL_UNUSED(loop);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_getnameinfo_numeric() takes 2 arguments");
        return NULL;
    }
    long flags = PyLong_Check(args[1]) ? PyLong_AsLong(args[1]) : -1;
    if (flags == -1) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if ((flags & (NI_NUMERICHOST | NI_NUMERICSERV)) != (NI_NUMERICHOST | NI_NUMERICSERV))
        Py_RETURN_NONE;
    PyObject *fn = tl_import_attr("socket", "getnameinfo");
    if (fn == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(fn, args, 2, NULL);
    Py_DECREF(fn);
    return r;
}

PyMethodDef tl_dns_loop_methods[] = {
    {"_getaddrinfo_numeric", (PyCFunction)(void (*)(void))loop_getaddrinfo_numeric,
     METH_FASTCALL, NULL},
    {"_getnameinfo_numeric", (PyCFunction)(void (*)(void))loop_getnameinfo_numeric,
     METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

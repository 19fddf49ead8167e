/* sockaddr.c - socket addresses in Python's form, as the socket module's
 * makesockaddr() builds them, so our values compare equal to asyncio's. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/un.h>

#include "tl_sockaddr.h"

static PyObject *ip_string(const struct sockaddr *sa, socklen_t len)
{
    /* the socket module's makeipaddr(): numeric getnameinfo, which also
     * spells an IPv6 scope the way Python does ("fe80::1%eth0") */
    char buf[NI_MAXHOST];
    int rc = getnameinfo(sa, len, buf, sizeof(buf), NULL, 0, NI_NUMERICHOST);
    if (rc != 0) {
        PyErr_Format(PyExc_OSError, "getnameinfo failed: %s", gai_strerror(rc));
        return NULL;
    }
    return PyUnicode_FromString(buf);
}

PyObject *tl_sockaddr_to_py(const struct sockaddr *sa, socklen_t len)
{
    if (len == 0)
        Py_RETURN_NONE;
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        PyObject *host = ip_string(sa, sizeof(*a));
        if (host == NULL)
            return NULL;
        return Py_BuildValue("Ni", host, (int)ntohs(a->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        PyObject *host = ip_string(sa, sizeof(*a));
        if (host == NULL)
            return NULL;
        return Py_BuildValue("NiII", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    case AF_UNIX: {
        /* copy into a zeroed struct: an unnamed socket has no path bytes */
        struct sockaddr_un a;
        memset(&a, 0, sizeof(a));
        memcpy(&a, sa, len < sizeof(a) ? len : sizeof(a));
        size_t pathlen = len > offsetof(struct sockaddr_un, sun_path)
                             ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (pathlen > sizeof(a.sun_path))
            pathlen = sizeof(a.sun_path);
        if (pathlen > 0 && a.sun_path[0] == 0)   /* Linux abstract namespace */
            return PyBytes_FromStringAndSize(a.sun_path, (Py_ssize_t)pathlen);
        a.sun_path[sizeof(a.sun_path) - 1] = 0;
        return PyUnicode_DecodeFSDefault(a.sun_path);
    }
    default:
        return Py_BuildValue("iy#", (int)sa->sa_family, sa->sa_data,
                             (Py_ssize_t)sizeof(sa->sa_data));
    }
}

int tl_is_numeric_host(PyObject *host)
{
    const char *s;
    Py_ssize_t n;
    if (PyUnicode_Check(host)) {
        s = PyUnicode_AsUTF8AndSize(host, &n);
        if (s == NULL)
            return -1;
    } else if (PyBytes_Check(host)) {
        s = PyBytes_AS_STRING(host);
        n = PyBytes_GET_SIZE(host);
    } else {
        return 0;
    }
    if (n == 0 || (size_t)n != strlen(s) || n >= INET6_ADDRSTRLEN)
        return 0;
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

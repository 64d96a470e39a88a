/* fb_err: lookups in the shared error table (see fb_err.h). */
#include "fb_err.h"

#include <errno.h>
#include <string.h>

struct fb_err_entry {
    const char *name;
    int http_status;
    int exit_code;
    const char *message;
};

static const struct fb_err_entry fb_err_entries[] = {
#define FB_ERR_ROW(e, name, http, exitc, msg) {name, http, exitc, msg},
    FB_ERR_TABLE(FB_ERR_ROW)
#undef FB_ERR_ROW
};

_Static_assert(sizeof(fb_err_entries) / sizeof(fb_err_entries[0]) == FB_ERR__COUNT, "error table complete");

static const struct fb_err_entry *fb_err_entry(fb_err e)
{
    if ((unsigned)e >= FB_ERR__COUNT)
        return &fb_err_entries[FB_ERR_INTERNAL];
    return &fb_err_entries[e];
}

const char *fb_err_name(fb_err e)
{
    return (unsigned)e >= FB_ERR__COUNT ? "unknown" : fb_err_entries[e].name;
}

const char *fb_err_message(fb_err e)
{
    return fb_err_entry(e)->message;
}

int fb_err_http_status(fb_err e)
{
    return fb_err_entry(e)->http_status;
}

int fb_err_exit_code(fb_err e)
{
    return fb_err_entry(e)->exit_code;
}

fb_err fb_err_from_name(const char *name)
{
    if (name == NULL)
        return FB_ERR_PROTOCOL;
    for (unsigned i = 0; i < FB_ERR__COUNT; i++)
        if (strcmp(fb_err_entries[i].name, name) == 0)
            return (fb_err)i;
    return FB_ERR_PROTOCOL;
}

fb_err fb_err_from_errno(int errnum)
{
    switch (errnum) {
    case 0:
        return FB_OK;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return FB_ERR_DISK_FULL;
    case EACCES:
    case EPERM:
    case EROFS:
        return FB_ERR_PERMISSION;
    case ENOENT:
    case ENOTDIR:
        return FB_ERR_NOT_FOUND;
    case EXDEV:
    case ELOOP:
        return FB_ERR_PATH_ESCAPE;
    case ENAMETOOLONG:
    case EINVAL:
        return FB_ERR_BAD_PATH;
    case EEXIST:
        return FB_ERR_EXISTS;
    case ENOMEM:
        return FB_ERR_NOMEM;
    default:
        return FB_ERR_IO;
    }
}

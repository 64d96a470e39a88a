/* fb_config_private.h: what fb_config.c, fb_config_xml.c and fb_config_edit.c share: the
 * per-call error list, the saved libxml2 handlers and the helpers between the files. Not part of
 * libfb's interface (that is fb_config.h). */
#ifndef FB_CONFIG_PRIVATE_H
#define FB_CONFIG_PRIVATE_H

#include <stddef.h>

#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#include "fb_config.h"

/* Errors of one call, kept on the caller's stack (no global state). */
typedef struct config_errors {
    char *buf;         /* caller's ERRBUF, may be NULL */
    size_t len;        /* its size */
    size_t used;       /* characters written so far */
    unsigned count;    /* errors seen (shown or not) */
    const char *file;  /* name used for errors without a file of their own */
    char generic[512]; /* text from the unstructured handler, used if nothing else came */
    size_t generic_used;
} config_errors;

/* The thread-local libxml2 handlers in force before a call, restored after it. */
typedef struct config_saved_handlers {
    xmlStructuredErrorFunc serror;
    void *sctx;
    xmlGenericErrorFunc gerror;
    void *gctx;
} config_saved_handlers;

/* fb_config_xml.c */
void config_errors_init(config_errors *errs, char *errbuf, size_t errlen, const char *file);
void config_errors_finish(config_errors *errs);
/* Adds "FILE:LINE: message" (LINE 0: none) to ERRS. */
__attribute__((format(printf, 4, 5))) void config_error_at(config_errors *errs, const char *file, long line,
                                                           const char *fmt, ...);
#define config_error_node(errs, node, ...)                                                                   \
    config_error_at((errs), (errs)->file, xmlGetLineNo(node), __VA_ARGS__)
void config_handlers_install(config_saved_handlers *saved, config_errors *errs);
void config_handlers_restore(const config_saved_handlers *saved);
/* Parses PATH into a tree, errors named after ERRS->file. Refuses DTDs. */
fb_err config_parse(xmlDocPtr *pdoc, const char *path, config_errors *errs);
/* Elements that belong in Apache's configuration (TLS files): an error saying where to set them. */
int config_check_foreign(xmlDocPtr doc, config_errors *errs);
/* Picks the schema file (see fb_config_load in the header) into OUT. */
fb_err config_find_schema(char *out, size_t outlen, const char *path, const char *schema,
                          config_errors *errs);
fb_err config_validate(xmlDocPtr doc, const char *schema_path, config_errors *errs);

/* fb_config.c */
int config_name_is(const xmlNode *node, const char *name);
int config_is_blank(char c);
/* fb_config_load, with DISPLAY as the file name in messages. */
fb_err config_load_named(fb_config **pcfg, const char *path, const char *display, const char *schema,
                         char *errbuf, size_t errlen);

#endif

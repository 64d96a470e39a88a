/* fb_config_xml: fallback.xml as libxml2 sees it: the file read and parsed from memory (no
 * network, no DTD, no entity expansion), foreign elements refused, and the document validated
 * against fallback.xsd. libxml2's errors are captured through per-context handlers (and, for the
 * duration of a call, the thread-local global ones, restored afterwards) into a list of
 * "file:line: message" lines, so nothing is printed and other libxml2 users in the same process
 * (Apache modules) are not disturbed. */
#include "fb_config.h"
#include "fb_config_private.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
#include <libxml/xmlsave.h>
#include <libxml/xmlschemas.h>

#define CONFIG_SCHEMA_NAME "fallback.xsd"
#define CONFIG_MAX_ERRORS 8
#define CONFIG_PARSE_OPTIONS (XML_PARSE_NONET | XML_PARSE_BIG_LINES)

/* libxml2 2.12 made the structured error argument const. */
#if LIBXML_VERSION >= 21200
typedef const xmlError *config_xml_error_ptr;
#else
typedef xmlErrorPtr config_xml_error_ptr;
#endif

void config_errors_init(config_errors *errs, char *errbuf, size_t errlen, const char *file)
{
    memset(errs, 0, sizeof(*errs));
    errs->buf = errbuf;
    errs->len = errbuf != NULL ? errlen : 0;
    errs->file = file;
    if (errs->len > 0)
        errs->buf[0] = '\0';
}

/* Appends one line. The first error always goes first; lines after CONFIG_MAX_ERRORS are only
 * counted, and config_errors_finish says how many were left out. */
static void config_errors_add_line(config_errors *errs, const char *line)
{
    errs->count++;
    if (errs->count > CONFIG_MAX_ERRORS || errs->len == 0 || errs->used + 1 >= errs->len)
        return;
    int n =
        snprintf(errs->buf + errs->used, errs->len - errs->used, "%s%s", errs->used > 0 ? "\n" : "", line);
    if (n < 0)
        return;
    errs->used += (size_t)n;
    if (errs->used >= errs->len)
        errs->used = errs->len - 1; /* truncated */
}

void config_errors_finish(config_errors *errs)
{
    if (errs->count == 0 && errs->generic_used > 0) {
        char line[600];
        snprintf(line, sizeof(line), "%s: %s", errs->file, errs->generic);
        config_errors_add_line(errs, line);
    }
    if (errs->count > CONFIG_MAX_ERRORS && errs->len > errs->used + 1) {
        snprintf(errs->buf + errs->used, errs->len - errs->used, "\n(%u more errors not shown)",
                 errs->count - CONFIG_MAX_ERRORS);
    }
}

void config_error_at(config_errors *errs, const char *file, long line, const char *fmt, ...)
{
    char msg[512];
    char full[1200];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(full, sizeof(full), "%s:%ld: %s", file, line, msg);
    else
        snprintf(full, sizeof(full), "%s: %s", file, msg);
    config_errors_add_line(errs, full);
}

/* Structured handler for schema contexts and the thread-local fallback: DATA is our list. */
static void config_xml_error(void *data, config_xml_error_ptr err)
{
    config_errors *errs = data;
    if (errs == NULL || err == NULL || err->level < XML_ERR_ERROR)
        return; /* warnings do not make a file invalid */

    char msg[700];
    snprintf(msg, sizeof(msg), "%s", err->message != NULL ? err->message : "unknown XML error");
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';

    long line = err->line;
    if (line <= 0 && err->node != NULL && ((xmlNodePtr)err->node)->type == XML_ELEMENT_NODE)
        line = xmlGetLineNo((xmlNodePtr)err->node);
    /* Errors in the document we parsed carry its URL, which is errs->file; errors while reading
     * the schema carry the schema's own file name, which is what the admin must look at. */
    const char *file = err->file != NULL && err->file[0] != '\0' ? err->file : errs->file;
    config_error_at(errs, file, line, "%s", msg);
}

/* Structured handler installed in a parser context: its user data is the parser context. */
static void config_parser_error(void *data, config_xml_error_ptr err)
{
    xmlParserCtxtPtr ctxt = data;
    config_xml_error(ctxt != NULL ? ctxt->_private : NULL, err);
}

/* Unstructured messages (rare code paths in libxml2) arrive in fragments; keep the text. */
__attribute__((format(printf, 2, 3))) static void config_generic_error(void *data, const char *fmt, ...)
{
    config_errors *errs = data;
    if (errs == NULL || errs->generic_used + 1 >= sizeof(errs->generic))
        return;
    va_list ap;
    va_start(ap, fmt);
    int n =
        vsnprintf(errs->generic + errs->generic_used, sizeof(errs->generic) - errs->generic_used, fmt, ap);
    va_end(ap);
    if (n > 0) {
        errs->generic_used += (size_t)n;
        if (errs->generic_used >= sizeof(errs->generic))
            errs->generic_used = sizeof(errs->generic) - 1;
    }
    for (size_t i = 0; i < errs->generic_used; i++)
        if (errs->generic[i] == '\n')
            errs->generic[i] = ' ';
}

void config_handlers_install(config_saved_handlers *saved, config_errors *errs)
{
    saved->serror = xmlStructuredError;
    saved->sctx = xmlStructuredErrorContext;
    saved->gerror = xmlGenericError;
    saved->gctx = xmlGenericErrorContext;
    xmlSetStructuredErrorFunc(errs, config_xml_error);
    xmlSetGenericErrorFunc(errs, config_generic_error);
}

void config_handlers_restore(const config_saved_handlers *saved)
{
    xmlSetStructuredErrorFunc(saved->sctx, saved->serror);
    xmlSetGenericErrorFunc(saved->gctx, saved->gerror);
}

/* Reads a whole regular file of at most FB_CONFIG_MAX_FILE_SIZE bytes. */
static fb_err config_read_file(char **pbuf, size_t *plen, const char *path, config_errors *errs)
{
    fb_err rv = FB_ERR_CONFIG;
    char *buf = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

    if (fd < 0) {
        config_error_at(errs, errs->file, 0, "cannot open: %s", strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        config_error_at(errs, errs->file, 0, "cannot stat: %s", strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        config_error_at(errs, errs->file, 0, "not a regular file");
        goto out;
    }
    if (st.st_size > FB_CONFIG_MAX_FILE_SIZE) {
        config_error_at(errs, errs->file, 0, "file is larger than %d bytes", FB_CONFIG_MAX_FILE_SIZE);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        rv = FB_ERR_NOMEM;
        config_error_at(errs, errs->file, 0, "out of memory");
        goto out;
    }
    size_t len = 0;
    /* Bounded: the loop stops at EOF, on error, or when the buffer (size known) is full. */
    while (len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            config_error_at(errs, errs->file, 0, "cannot read: %s", strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    *pbuf = buf;
    *plen = len;
    buf = NULL;
    rv = FB_OK;
out:
    free(buf);
    if (fd >= 0)
        close(fd);
    return rv;
}

/* Parses PATH into a tree, errors named after ERRS->file. Refuses DTDs: the format needs none,
 * and without one no entity can be declared, let alone expanded. */
fb_err config_parse(xmlDocPtr *pdoc, const char *path, config_errors *errs)
{
    fb_err rv;
    char *buf = NULL;
    size_t len = 0;
    xmlParserCtxtPtr ctxt = NULL;
    xmlDocPtr doc = NULL;

    rv = config_read_file(&buf, &len, path, errs);
    if (rv != FB_OK)
        goto out;
    if (len > INT_MAX) { /* cannot happen with FB_CONFIG_MAX_FILE_SIZE; xmlCtxtReadMemory takes int */
        rv = FB_ERR_CONFIG;
        goto out;
    }
    rv = FB_ERR_CONFIG;
    ctxt = xmlNewParserCtxt();
    if (ctxt == NULL) {
        rv = FB_ERR_NOMEM;
        config_error_at(errs, errs->file, 0, "out of memory");
        goto out;
    }
    ctxt->_private = errs;
    ctxt->sax->serror = config_parser_error;
    doc = xmlCtxtReadMemory(ctxt, buf, (int)len, errs->file, NULL, CONFIG_PARSE_OPTIONS);
    if (doc == NULL || !ctxt->wellFormed) {
        if (errs->count == 0)
            config_error_at(errs, errs->file, 0, "not a well-formed XML document");
        goto out;
    }
    if (doc->intSubset != NULL || doc->extSubset != NULL) {
        config_error_at(errs, errs->file, 0, "a DOCTYPE declaration is not allowed");
        goto out;
    }
    if (xmlDocGetRootElement(doc) == NULL) {
        config_error_at(errs, errs->file, 0, "no root element");
        goto out;
    }
    *pdoc = doc;
    doc = NULL;
    rv = FB_OK;
out:
    if (doc != NULL)
        xmlFreeDoc(doc);
    if (ctxt != NULL)
        xmlFreeParserCtxt(ctxt);
    free(buf);
    return rv;
}

/* Elements an aspera.conf <http_server> block may carry that this system cannot apply, and where
 * the setting belongs instead. Reported before schema validation, so the admin reads this rather
 * than the validator's "This element is not expected". */
static const struct config_foreign {
    const char *section, *name, *why;
} config_foreign[] = {
    {"http_server", "cert_file",
     "TLS for the fallback is Apache's: set SSLCertificateFile in the <VirtualHost> of https_port "
     "(mod_ssl) and remove this element"},
    {"http_server", "key_file",
     "TLS for the fallback is Apache's: set SSLCertificateKeyFile in the <VirtualHost> of https_port "
     "(mod_ssl) and remove this element"},
};

int config_check_foreign(xmlDocPtr doc, config_errors *errs)
{
    const xmlNode *root = xmlDocGetRootElement(doc);
    int found = 0;

    for (const xmlNode *sect = root->children; sect != NULL; sect = sect->next) {
        if (sect->type != XML_ELEMENT_NODE)
            continue;
        for (const xmlNode *n = sect->children; n != NULL; n = n->next) {
            if (n->type != XML_ELEMENT_NODE)
                continue;
            for (size_t i = 0; i < sizeof(config_foreign) / sizeof(config_foreign[0]); i++)
                if (xmlStrcmp(sect->name, (const xmlChar *)config_foreign[i].section) == 0 &&
                    xmlStrcmp(n->name, (const xmlChar *)config_foreign[i].name) == 0) {
                    config_error_at(errs, errs->file, xmlGetLineNo((xmlNodePtr)n),
                                    "Element '%s': not supported here: %s", n->name, config_foreign[i].why);
                    found = 1;
                }
        }
    }
    return found;
}

/* Picks the schema file (see fb_config_load in the header) into OUT. */
fb_err config_find_schema(char *out, size_t outlen, const char *path, const char *schema, config_errors *errs)
{
    const char *env = getenv("FB_SCHEMA");
    int n;

    if (schema != NULL && schema[0] != '\0') {
        n = snprintf(out, outlen, "%s", schema);
    } else if (env != NULL && env[0] != '\0') {
        n = snprintf(out, outlen, "%s", env);
    } else if (access(FB_DEFAULT_SCHEMA_FILE, R_OK) == 0) {
        n = snprintf(out, outlen, "%s", FB_DEFAULT_SCHEMA_FILE);
    } else {
        const char *slash = strrchr(path, '/');
        if (slash == NULL)
            n = snprintf(out, outlen, "%s", CONFIG_SCHEMA_NAME);
        else
            n = snprintf(out, outlen, "%.*s/%s", (int)(slash - path), path, CONFIG_SCHEMA_NAME);
        if (n >= 0 && (size_t)n < outlen && access(out, R_OK) != 0) {
            config_error_at(errs, errs->file, 0,
                            "no schema to validate against: set FB_SCHEMA, or install %s as %s or "
                            "beside the configuration file",
                            CONFIG_SCHEMA_NAME, FB_DEFAULT_SCHEMA_FILE);
            return FB_ERR_CONFIG;
        }
    }
    if (n < 0 || (size_t)n >= outlen) {
        config_error_at(errs, errs->file, 0, "schema path too long");
        return FB_ERR_CONFIG;
    }
    if (access(out, R_OK) != 0) {
        config_error_at(errs, errs->file, 0, "cannot read schema %s: %s", out, strerror(errno));
        return FB_ERR_CONFIG;
    }
    return FB_OK;
}

fb_err config_validate(xmlDocPtr doc, const char *schema_path, config_errors *errs)
{
    fb_err rv = FB_ERR_CONFIG;
    xmlSchemaParserCtxtPtr pctxt = NULL;
    xmlSchemaPtr schema = NULL;
    xmlSchemaValidCtxtPtr vctxt = NULL;
    const char *doc_file = errs->file;

    /* Errors while reading the schema are about the schema file. */
    errs->file = schema_path;
    pctxt = xmlSchemaNewParserCtxt(schema_path);
    if (pctxt == NULL)
        goto nomem;
    xmlSchemaSetParserStructuredErrors(pctxt, config_xml_error, errs);
    schema = xmlSchemaParse(pctxt);
    if (schema == NULL) {
        if (errs->count == 0)
            config_error_at(errs, schema_path, 0, "cannot parse the schema");
        goto out;
    }
    errs->file = doc_file;
    vctxt = xmlSchemaNewValidCtxt(schema);
    if (vctxt == NULL)
        goto nomem;
    xmlSchemaSetValidStructuredErrors(vctxt, config_xml_error, errs);
    int ret = xmlSchemaValidateDoc(vctxt, doc);
    if (ret == 0 && errs->count == 0)
        rv = FB_OK;
    else if (errs->count == 0)
        config_error_at(errs, doc_file, 0, "schema validation failed (internal error %d)", ret);
    goto out;
nomem:
    rv = FB_ERR_NOMEM;
    config_error_at(errs, doc_file, 0, "out of memory");
out:
    errs->file = doc_file;
    if (vctxt != NULL)
        xmlSchemaFreeValidCtxt(vctxt);
    if (schema != NULL)
        xmlSchemaFree(schema);
    if (pctxt != NULL)
        xmlSchemaFreeParserCtxt(pctxt);
    return rv;
}

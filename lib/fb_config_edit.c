/* fb_config_edit: fb_config_set_port, the one edit of fallback.xml: the port element changed in
 * the document (indentation kept), the result validated and loaded as a new file before it
 * replaces the old one (write, fsync, rename, fsync of the directory). */
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

/* ---- set_port ----------------------------------------------------------------------------- */

static int config_depth(const xmlNode *node)
{
    int depth = 0;
    for (const xmlNode *p = node->parent; p != NULL && p->type == XML_ELEMENT_NODE && depth < 64;
         p = p->parent)
        depth++;
    return depth;
}

static int config_text_is_blank(const xmlNode *node)
{
    if (node == NULL || node->type != XML_TEXT_NODE)
        return 0;
    for (const xmlChar *c = node->content; c != NULL && *c != '\0'; c++)
        if (!config_is_blank((char)*c))
            return 0;
    return 1;
}

/* Newline plus two spaces per level, the shipped file's layout. */
static xmlNodePtr config_indent_node(xmlDocPtr doc, int level)
{
    char buf[1 + 2 * 32 + 1];
    if (level > 32)
        level = 32;
    buf[0] = '\n';
    memset(buf + 1, ' ', (size_t)(2 * level));
    buf[1 + 2 * level] = '\0';
    return xmlNewDocText(doc, (const xmlChar *)buf);
}

/* Adds <NAME>CONTENT</NAME> as the last element of PARENT, indented like its siblings.
 * libxml2 merges adjacent text nodes on insertion (freeing the inserted one), so the element is
 * linked first and each text node is inserted next to it and never touched again. */
static xmlNodePtr config_add_child(xmlNodePtr parent, const char *name, const char *content)
{
    xmlDocPtr doc = parent->doc;
    int level = config_depth(parent);
    xmlNodePtr elem = xmlNewDocNode(doc, NULL, (const xmlChar *)name, (const xmlChar *)content);
    xmlNodePtr text;

    if (elem == NULL)
        return NULL;
    if (config_text_is_blank(parent->last)) {
        /* "...<prev/>\n  </parent>" becomes "...<prev/>\n    <new/>\n  </parent>". */
        if (xmlAddPrevSibling(parent->last, elem) == NULL)
            goto fail;
    } else {
        if (xmlAddChild(parent, elem) == NULL)
            goto fail;
        if ((text = config_indent_node(doc, level)) == NULL)
            return NULL; /* ELEM is linked: it goes with the document */
        if (xmlAddNextSibling(elem, text) == NULL) {
            xmlFreeNode(text);
            return NULL;
        }
    }
    if ((text = config_indent_node(doc, level + 1)) == NULL)
        return NULL;
    if (xmlAddPrevSibling(elem, text) == NULL) {
        xmlFreeNode(text);
        return NULL;
    }
    return elem;
fail:
    xmlFreeNode(elem);
    return NULL;
}

static xmlNodePtr config_find_child(xmlNodePtr parent, const char *name)
{
    for (xmlNodePtr n = parent->children; n != NULL; n = n->next)
        if (config_name_is(n, name))
            return n;
    return NULL;
}

static void config_fsync_dir(const char *file)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(file, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == file)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - file), file);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd); /* best effort: the rename is already visible */
        close(fd);
    }
}

fb_err fb_config_set_port(const char *path, const char *schema, const char *which, int port, char *errbuf,
                          size_t errlen)
{
    fb_err rv = FB_ERR_CONFIG;
    config_errors errs;
    config_saved_handlers saved;
    xmlDocPtr doc = NULL;
    xmlSaveCtxtPtr save = NULL;
    fb_config *cfg = NULL;
    char real[PATH_MAX];
    char tmp[PATH_MAX + 8];
    char value[16];
    const char *elem_name;
    int fd = -1, tmp_created = 0;
    struct stat st;

    config_errors_init(&errs, errbuf, errlen, path != NULL ? path : "(null)");
    if (path == NULL || which == NULL) {
        config_error_at(&errs, errs.file, 0, "no file or port kind given");
        return FB_ERR_USAGE;
    }
    if (strcmp(which, "http") == 0)
        elem_name = "http_port";
    else if (strcmp(which, "https") == 0)
        elem_name = "https_port";
    else {
        config_error_at(&errs, path, 0, "unknown port kind '%s' (use http or https)", which);
        return FB_ERR_USAGE;
    }
    if (realpath(path, real) == NULL) {
        config_error_at(&errs, path, 0, "cannot open: %s", strerror(errno));
        return FB_ERR_CONFIG;
    }
    if (stat(real, &st) != 0) {
        config_error_at(&errs, path, 0, "cannot stat: %s", strerror(errno));
        return FB_ERR_CONFIG;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", real);
    /* The range is left to validation on purpose: the same check, the same message. */
    snprintf(value, sizeof(value), "%d", port);

    xmlInitParser();
    config_handlers_install(&saved, &errs);
    rv = config_parse(&doc, real, &errs);
    if (rv != FB_OK)
        goto out;
    rv = FB_ERR_CONFIG;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!config_name_is(root, "CONF")) {
        config_error_node(&errs, root, "the root element must be <CONF version=\"1\"> (or \"2\"), not <%s>",
                          root->name);
        goto out;
    }
    xmlNodePtr server = config_find_child(root, "http_server");
    if (server == NULL && (server = config_add_child(root, "http_server", NULL)) == NULL)
        goto nomem;
    xmlNodePtr elem = config_find_child(server, elem_name);
    if (elem == NULL) {
        if (config_add_child(server, elem_name, value) == NULL)
            goto nomem;
    } else {
        xmlNodeSetContent(elem, (const xmlChar *)value);
    }

    /* O_EXCL: never write through something already at PATH.tmp (a symlink planted there, or
     * another fbctl at work). */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        rv = errno == EEXIST ? FB_ERR_CONFIG : FB_ERR_IO;
        config_error_at(&errs, tmp, 0, "cannot create: %s%s", strerror(errno),
                        errno == EEXIST ? " (left by an interrupted change? remove it and retry)" : "");
        goto out;
    }
    tmp_created = 1;
    if (fchmod(fd, st.st_mode & 07777) != 0 || (geteuid() == 0 && fchown(fd, st.st_uid, st.st_gid) != 0)) {
        rv = FB_ERR_IO;
        config_error_at(&errs, tmp, 0, "cannot set mode or owner: %s", strerror(errno));
        goto out;
    }
    /* No XML_SAVE_FORMAT: the blank text nodes and comments of the original are written back
     * as they were. */
    save = xmlSaveToFd(fd, "UTF-8", 0);
    if (save == NULL)
        goto nomem;
    long saved_bytes = xmlSaveDoc(save, doc);
    int close_rc = xmlSaveClose(save);
    save = NULL;
    if (saved_bytes < 0 || close_rc < 0 || fsync(fd) != 0) {
        rv = FB_ERR_IO;
        config_error_at(&errs, tmp, 0, "cannot write: %s",
                        errno != 0 ? strerror(errno) : "libxml2 save failed");
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rv = FB_ERR_IO;
        config_error_at(&errs, tmp, 0, "cannot write: %s", strerror(errno));
        goto out;
    }
    fd = -1;

    /* Validate exactly what will be installed, with the normal loader; errors name PATH. */
    rv = config_load_named(&cfg, tmp, path, schema, errbuf, errlen);
    if (rv != FB_OK) {
        errs.count = 1; /* ERRBUF already holds the loader's messages; keep them */
        errs.used = errbuf != NULL ? strlen(errbuf) : 0;
        goto out;
    }
    int now = strcmp(which, "http") == 0 ? cfg->http_port : cfg->https_port;
    if (now != port) {
        rv = FB_ERR_CONFIG;
        config_error_at(&errs, path, 0, "%s is %d after the change, not %d", elem_name, now, port);
        goto out;
    }
    if (rename(tmp, real) != 0) {
        rv = FB_ERR_IO;
        config_error_at(&errs, real, 0, "cannot replace: %s", strerror(errno));
        goto out;
    }
    tmp_created = 0;
    config_fsync_dir(real);
    rv = FB_OK;
    goto out;
nomem:
    rv = FB_ERR_NOMEM;
    config_error_at(&errs, path, 0, "out of memory");
out:
    if (save != NULL)
        xmlSaveClose(save);
    if (fd >= 0)
        close(fd);
    if (tmp_created)
        unlink(tmp);
    config_errors_finish(&errs);
    config_handlers_restore(&saved);
    fb_config_free(cfg);
    if (doc != NULL)
        xmlFreeDoc(doc);
    return rv;
}

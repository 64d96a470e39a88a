/* fb_config: reads fallback.xml into an fb_config (see fb_config.h and docs/CONFIG.md): the
 * validated document (fb_config_xml.c) read element by element, checked as a whole, and the
 * public getters and printers. Editing the file is fb_config_edit.c. */
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

/* ---- extraction ------------------------------------------------------------------------- */

int config_name_is(const xmlNode *node, const char *name)
{
    return node->type == XML_ELEMENT_NODE && xmlStrcmp(node->name, (const xmlChar *)name) == 0;
}

int config_is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The element's text without surrounding XML blanks, malloc'd; NULL when out of memory. */
static char *config_text(const xmlNode *node)
{
    xmlChar *raw = xmlNodeGetContent(node);
    if (raw == NULL)
        return strdup("");
    const char *s = (const char *)raw;
    while (config_is_blank(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && config_is_blank(s[n - 1]))
        n--;
    char *out = strndup(s, n);
    xmlFree(raw);
    return out;
}

/* Context of the extraction pass. */
typedef struct config_reader {
    fb_config *cfg;
    config_errors *errs;
    int nomem;
    long http_port_line, https_port_line;
    long enable_http_line, enable_https_line;
    long min_rate_line;
    long root_line;
} config_reader;

static int config_get_uint(config_reader *rd, const xmlNode *node, uint64_t max, uint64_t *out)
{
    char *text = config_text(node);
    if (text == NULL) {
        rd->nomem = 1;
        return -1;
    }
    const char *s = text[0] == '+' ? text + 1 : text;
    char *end = NULL;
    errno = 0;
    unsigned long long v = s[0] >= '0' && s[0] <= '9' ? strtoull(s, &end, 10) : 0;
    int ok = end != NULL && *end == '\0' && errno == 0 && v <= max;
    if (!ok)
        config_error_node(rd->errs, node, "Element '%s': '%s' is not a number between 0 and %llu", node->name,
                          text, (unsigned long long)max);
    else
        *out = v;
    free(text);
    return ok ? 0 : -1;
}

static void config_get_int(config_reader *rd, const xmlNode *node, int *out, int min, int max)
{
    uint64_t v = 0;
    if (config_get_uint(rd, node, (uint64_t)max, &v) != 0)
        return;
    if (v < (uint64_t)min) {
        config_error_node(rd->errs, node, "Element '%s': %llu is below %d", node->name, (unsigned long long)v,
                          min);
        return;
    }
    *out = (int)v;
}

static void config_get_u32(config_reader *rd, const xmlNode *node, uint32_t *out)
{
    uint64_t v = 0;
    if (config_get_uint(rd, node, UINT32_MAX, &v) == 0)
        *out = (uint32_t)v;
}

static void config_get_bool(config_reader *rd, const xmlNode *node, int *out)
{
    char *text = config_text(node);
    if (text == NULL) {
        rd->nomem = 1;
        return;
    }
    if (strcmp(text, "true") == 0 || strcmp(text, "yes") == 0 || strcmp(text, "1") == 0)
        *out = 1;
    else if (strcmp(text, "false") == 0 || strcmp(text, "no") == 0 || strcmp(text, "0") == 0)
        *out = 0;
    else
        config_error_node(rd->errs, node, "Element '%s': '%s' is not a boolean (true/false, yes/no, 1/0)",
                          node->name, text);
    free(text);
}

static void config_get_string(config_reader *rd, const xmlNode *node, char **out)
{
    char *text = config_text(node);
    if (text == NULL) {
        rd->nomem = 1;
        return;
    }
    free(*out);
    *out = text;
}

/* A comma-separated list of NAMES (index i stands for bit 1 << i) into a bit set. */
static void config_get_list(config_reader *rd, const xmlNode *node, const char *const *names, unsigned nnames,
                            unsigned *out)
{
    char *text = config_text(node);
    if (text == NULL) {
        rd->nomem = 1;
        return;
    }
    unsigned bits = 0;
    char *save = NULL;
    for (char *tok = strtok_r(text, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        while (config_is_blank(*tok))
            tok++;
        size_t n = strlen(tok);
        while (n > 0 && config_is_blank(tok[n - 1]))
            tok[--n] = '\0';
        unsigned i;
        for (i = 0; i < nnames; i++)
            if (strcmp(tok, names[i]) == 0)
                break;
        if (i == nnames) {
            config_error_node(rd->errs, node, "Element '%s': unknown value '%s'", node->name, tok);
            free(text);
            return;
        }
        bits |= 1u << i;
    }
    free(text);
    if (bits == 0) {
        config_error_node(rd->errs, node, "Element '%s': the list is empty", node->name);
        return;
    }
    *out = bits;
}

/* Names in bit order of enum fb_policy and enum fb_cipher. */
static const char *const config_policy_names[] = {"fixed", "high", "fair", "low"};
static const char *const config_cipher_names[] = {"none", "aes-128-gcm", "aes-256-gcm"};
_Static_assert(FB_POLICY_FIXED == 1 && FB_POLICY_HIGH == 2 && FB_POLICY_FAIR == 4 && FB_POLICY_LOW == 8,
               "policy bits match config_policy_names");
_Static_assert(FB_CIPHER_NONE == 1 && FB_CIPHER_AES128_GCM == 2 && FB_CIPHER_AES256_GCM == 4,
               "cipher bits match config_cipher_names");

static void config_read_http_server(config_reader *rd, const xmlNode *sect)
{
    fb_config *cfg = rd->cfg;
    for (const xmlNode *n = sect->children; n != NULL; n = n->next) {
        if (config_name_is(n, "http_port")) {
            config_get_int(rd, n, &cfg->http_port, 1, 65535);
            rd->http_port_line = xmlGetLineNo(n);
        } else if (config_name_is(n, "https_port")) {
            config_get_int(rd, n, &cfg->https_port, 1, 65535);
            rd->https_port_line = xmlGetLineNo(n);
        } else if (config_name_is(n, "enable_http")) {
            config_get_bool(rd, n, &cfg->enable_http);
            rd->enable_http_line = xmlGetLineNo(n);
        } else if (config_name_is(n, "enable_https")) {
            config_get_bool(rd, n, &cfg->enable_https);
            rd->enable_https_line = xmlGetLineNo(n);
        }
    }
}

static void config_read_udp(config_reader *rd, const xmlNode *sect)
{
    fb_config *cfg = rd->cfg;
    for (const xmlNode *n = sect->children; n != NULL; n = n->next) {
        if (config_name_is(n, "port")) {
            config_get_int(rd, n, &cfg->udp_port, 1, 65535);
        } else if (config_name_is(n, "bind_address")) {
            config_get_string(rd, n, &cfg->bind_address);
            unsigned char addr[16];
            if (cfg->bind_address != NULL && inet_pton(AF_INET, cfg->bind_address, addr) != 1 &&
                inet_pton(AF_INET6, cfg->bind_address, addr) != 1)
                config_error_node(rd->errs, n,
                                  "Element 'bind_address': '%s' is not a numeric IPv4 or IPv6 address",
                                  cfg->bind_address);
        }
    }
}

static void config_read_transfer(config_reader *rd, const xmlNode *sect)
{
    fb_config *cfg = rd->cfg;
    uint64_t v;
    for (const xmlNode *n = sect->children; n != NULL; n = n->next) {
        if (config_name_is(n, "target_rate_cap_kbps")) {
            config_get_uint(rd, n, UINT64_MAX, &cfg->target_rate_cap_kbps);
        } else if (config_name_is(n, "min_rate_cap_kbps")) {
            config_get_uint(rd, n, UINT64_MAX, &cfg->min_rate_cap_kbps);
            rd->min_rate_line = xmlGetLineNo(n);
        } else if (config_name_is(n, "allowed_policies")) {
            config_get_list(rd, n, config_policy_names, 4, &cfg->allowed_policies);
        } else if (config_name_is(n, "allowed_ciphers")) {
            config_get_list(rd, n, config_cipher_names, 3, &cfg->allowed_ciphers);
        } else if (config_name_is(n, "content_protection_required")) {
            config_get_bool(rd, n, &cfg->content_protection_required);
        } else if (config_name_is(n, "chunk_size")) {
            if (config_get_uint(rd, n, UINT32_MAX, &v) != 0)
                continue;
            /* The schema lists the allowed values; checked again because a wrong chunk size
             * would break the bitmap arithmetic everywhere. */
            if (v < 65536 || v > 67108864 || (v & (v - 1)) != 0)
                config_error_node(
                    rd->errs, n,
                    "Element 'chunk_size': %llu is not a power of two between 65536 and 67108864",
                    (unsigned long long)v);
            else
                cfg->chunk_size = (uint32_t)v;
        } else if (config_name_is(n, "max_file_size")) {
            config_get_uint(rd, n, UINT64_MAX, &cfg->max_file_size);
        } else if (config_name_is(n, "file_mode")) {
            char *text = config_text(n);
            if (text == NULL) {
                rd->nomem = 1;
                continue;
            }
            char *end = NULL;
            unsigned long mode = strtoul(text, &end, 8);
            if (text[0] == '\0' || *end != '\0' || mode > 0777)
                config_error_node(rd->errs, n, "Element 'file_mode': '%s' is not an octal mode 0000-0777",
                                  text);
            else
                cfg->file_mode = (unsigned)mode;
            free(text);
        }
    }
}

static void config_read_sessions(config_reader *rd, const xmlNode *sect)
{
    fb_config *cfg = rd->cfg;
    int max_sessions = (int)cfg->max_sessions;
    for (const xmlNode *n = sect->children; n != NULL; n = n->next) {
        if (config_name_is(n, "shm_path")) {
            config_get_string(rd, n, &cfg->shm_path);
            if (cfg->shm_path != NULL && cfg->shm_path[0] != '/')
                config_error_node(rd->errs, n, "Element 'shm_path': '%s' is not an absolute path",
                                  cfg->shm_path);
        } else if (config_name_is(n, "max_sessions")) {
            config_get_int(rd, n, &max_sessions, 1, 65536);
            cfg->max_sessions = (uint32_t)max_sessions;
        } else if (config_name_is(n, "max_sessions_per_user")) {
            config_get_u32(rd, n, &cfg->max_sessions_per_user);
        } else if (config_name_is(n, "idle_timeout")) {
            config_get_u32(rd, n, &cfg->idle_timeout);
        } else if (config_name_is(n, "done_linger")) {
            config_get_u32(rd, n, &cfg->done_linger);
        } else if (config_name_is(n, "max_json_body")) {
            config_get_u32(rd, n, &cfg->max_json_body);
        }
    }
}

/* Checks an absolute docroot and drops trailing slashes ("/srv/x/" -> "/srv/x"). */
static int config_docroot_ok(config_reader *rd, const xmlNode *node, char *dir)
{
    if (dir[0] != '/') {
        config_error_node(rd->errs, node, "Element '%s': docroot '%s' is not an absolute path", node->name,
                          dir);
        return 0;
    }
    /* '..' would let the docroot move with the tree around it; refuse any such component. */
    for (const char *p = dir; (p = strstr(p, "..")) != NULL; p += 2) {
        if (p[-1] == '/' && (p[2] == '/' || p[2] == '\0')) {
            config_error_node(rd->errs, node, "Element '%s': docroot '%s' contains a '..' component",
                              node->name, dir);
            return 0;
        }
    }
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        dir[--n] = '\0';
    return 1;
}

static void config_read_docroots(config_reader *rd, const xmlNode *sect)
{
    fb_config *cfg = rd->cfg;
    unsigned count = 0;
    const xmlNode *default_node = NULL;

    for (const xmlNode *n = sect->children; n != NULL; n = n->next)
        if (n->type == XML_ELEMENT_NODE)
            count++;
    if (count == 0)
        return;
    /* One array for all entries: the schema allows nothing else in <docroots>. */
    cfg->docroots = calloc(count, sizeof(*cfg->docroots));
    const xmlNode **nodes = calloc(count, sizeof(*nodes));
    if (cfg->docroots == NULL || nodes == NULL) {
        free(nodes);
        rd->nomem = 1;
        return;
    }

    for (const xmlNode *n = sect->children; n != NULL && cfg->ndocroots < count; n = n->next) {
        int is_user = config_name_is(n, "user"), is_group = config_name_is(n, "group");
        if (!is_user && !is_group && !config_name_is(n, "default"))
            continue;
        char *dir = config_text(n);
        char *name = NULL;
        if (dir == NULL) {
            rd->nomem = 1;
            break;
        }
        if (!config_docroot_ok(rd, n, dir)) {
            free(dir);
            continue;
        }
        if (!is_user && !is_group) {
            if (default_node != NULL) {
                config_error_node(rd->errs, n,
                                  "Element 'default': a second <default> docroot (the first is at line %ld)",
                                  xmlGetLineNo(default_node));
                free(dir);
                continue;
            }
            default_node = n;
        } else {
            xmlChar *attr = xmlGetProp(n, (const xmlChar *)"name");
            int has_attr = attr != NULL;
            name = has_attr ? strdup((const char *)attr) : NULL;
            xmlFree(attr);
            if (name == NULL || name[0] == '\0') {
                if (name == NULL && has_attr)
                    rd->nomem = 1;
                else
                    config_error_node(rd->errs, n, "Element '%s': attribute 'name' is missing or empty",
                                      n->name);
                free(name);
                free(dir);
                continue;
            }
            const xmlNode *dup = NULL;
            for (unsigned i = 0; i < cfg->ndocroots && dup == NULL; i++) {
                const char *other = is_user ? cfg->docroots[i].user : cfg->docroots[i].group;
                if (other != NULL && strcmp(other, name) == 0)
                    dup = nodes[i];
            }
            if (dup != NULL) {
                config_error_node(rd->errs, n, "Element '%s': duplicate %s name '%s' (first at line %ld)",
                                  n->name, is_user ? "user" : "group", name, xmlGetLineNo(dup));
                free(name);
                free(dir);
                continue;
            }
        }
        fb_docroot *d = &cfg->docroots[cfg->ndocroots];
        d->user = is_user ? name : NULL;
        d->group = is_group ? name : NULL;
        d->docroot = dir;
        d->line = xmlGetLineNo(n);
        nodes[cfg->ndocroots] = n;
        cfg->ndocroots++;
    }
    free(nodes);
}

/* Cross-field rules the schema cannot state. */
static void config_check_semantics(config_reader *rd)
{
    fb_config *cfg = rd->cfg;
    config_errors *errs = rd->errs;

    if (!cfg->enable_http && !cfg->enable_https)
        config_error_at(errs, errs->file,
                        rd->enable_https_line  ? rd->enable_https_line
                        : rd->enable_http_line ? rd->enable_http_line
                                               : rd->root_line,
                        "enable_http and enable_https are both false: clients could neither create sessions "
                        "nor continue over HTTP(S)");
    if (cfg->enable_http && cfg->enable_https && cfg->http_port == cfg->https_port)
        config_error_at(errs, errs->file,
                        rd->https_port_line  ? rd->https_port_line
                        : rd->http_port_line ? rd->http_port_line
                                             : rd->root_line,
                        "http_port and https_port are both %d: one port cannot serve plain HTTP and "
                        "HTTPS; give each its own port (and Apache a Listen for each), or set "
                        "enable_http to false",
                        cfg->http_port);
    if (cfg->target_rate_cap_kbps != 0 && cfg->min_rate_cap_kbps > cfg->target_rate_cap_kbps)
        config_error_at(errs, errs->file, rd->min_rate_line,
                        "min_rate_cap_kbps (%llu) is above target_rate_cap_kbps (%llu)",
                        (unsigned long long)cfg->min_rate_cap_kbps,
                        (unsigned long long)cfg->target_rate_cap_kbps);
}

static fb_err config_extract(fb_config *cfg, xmlDocPtr doc, config_errors *errs)
{
    config_reader rd;
    memset(&rd, 0, sizeof(rd));
    rd.cfg = cfg;
    rd.errs = errs;

    const xmlNode *root = xmlDocGetRootElement(doc);
    if (!config_name_is(root, "CONF")) {
        config_error_node(errs, root, "the root element must be <CONF version=\"1\"> (or \"2\"), not <%s>",
                          root->name);
        return FB_ERR_CONFIG;
    }
    rd.root_line = xmlGetLineNo(root);
    {
        xmlChar *v = xmlGetProp(root, (const xmlChar *)"version");
        cfg->version =
            v != NULL && xmlStrcmp(v, (const xmlChar *)"2") == 0 ? 2 : 1; /* the schema allows 1, 2 */
        xmlFree(v);
    }
    for (const xmlNode *n = root->children; n != NULL; n = n->next) {
        if (config_name_is(n, "http_server"))
            config_read_http_server(&rd, n);
        else if (config_name_is(n, "udp"))
            config_read_udp(&rd, n);
        else if (config_name_is(n, "transfer"))
            config_read_transfer(&rd, n);
        else if (config_name_is(n, "sessions"))
            config_read_sessions(&rd, n);
        else if (config_name_is(n, "docroots"))
            config_read_docroots(&rd, n);
    }
    if (rd.nomem) {
        config_error_at(errs, errs->file, 0, "out of memory");
        return FB_ERR_NOMEM;
    }
    config_check_semantics(&rd);
    return errs->count == 0 ? FB_OK : FB_ERR_CONFIG;
}

/* ---- public ----------------------------------------------------------------------------- */

void fb_config_defaults(fb_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->http_port = FB_DEFAULT_HTTP_PORT;
    cfg->https_port = FB_DEFAULT_HTTPS_PORT;
    cfg->enable_http = 0;
    cfg->enable_https = 1;
    cfg->version = 1;
    cfg->udp_port = FB_DEFAULT_UDP_PORT;
    cfg->bind_address = (char *)"::";
    cfg->allowed_policies = FB_POLICY_FIXED | FB_POLICY_HIGH | FB_POLICY_FAIR | FB_POLICY_LOW;
    cfg->allowed_ciphers = FB_CIPHER_AES128_GCM | FB_CIPHER_AES256_GCM;
    cfg->chunk_size = FB_DEFAULT_CHUNK_SIZE;
    cfg->file_mode = FB_DEFAULT_FILE_MODE;
    cfg->shm_path = (char *)FB_DEFAULT_SHM_PATH;
    cfg->max_sessions = FB_DEFAULT_MAX_SESSIONS;
    cfg->max_sessions_per_user = FB_DEFAULT_MAX_SESSIONS_PER_USER;
    cfg->idle_timeout = FB_DEFAULT_IDLE_TIMEOUT;
    cfg->done_linger = FB_DEFAULT_DONE_LINGER;
    cfg->max_json_body = FB_DEFAULT_MAX_JSON_BODY;
}

void fb_config_free(fb_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->file);
    free(cfg->bind_address);
    free(cfg->shm_path);
    for (unsigned i = 0; i < cfg->ndocroots; i++) {
        free(cfg->docroots[i].user);
        free(cfg->docroots[i].group);
        free(cfg->docroots[i].docroot);
    }
    free(cfg->docroots);
    free(cfg);
}

/* fb_config_load, with DISPLAY as the file name in messages (set_port validates PATH.tmp but
 * reports against the file the admin named). */
fb_err config_load_named(fb_config **pcfg, const char *path, const char *display, const char *schema,
                         char *errbuf, size_t errlen)
{
    fb_err rv;
    config_errors errs;
    config_saved_handlers saved;
    xmlDocPtr doc = NULL;
    fb_config *cfg = NULL;
    char schema_path[PATH_MAX];

    *pcfg = NULL;
    config_errors_init(&errs, errbuf, errlen, display);
    xmlInitParser(); /* idempotent; makes first use from several threads safe */
    config_handlers_install(&saved, &errs);

    rv = config_find_schema(schema_path, sizeof(schema_path), path, schema, &errs);
    if (rv != FB_OK)
        goto out;
    rv = config_parse(&doc, path, &errs);
    if (rv != FB_OK)
        goto out;
    if (config_check_foreign(doc, &errs)) {
        rv = FB_ERR_CONFIG;
        goto out;
    }
    rv = config_validate(doc, schema_path, &errs);
    if (rv != FB_OK)
        goto out;

    cfg = malloc(sizeof(*cfg));
    if (cfg == NULL)
        goto nomem;
    fb_config_defaults(cfg);
    /* Replace the static defaults so fb_config_free can free every string. */
    cfg->bind_address = strdup(cfg->bind_address);
    cfg->shm_path = strdup(cfg->shm_path);
    cfg->file = strdup(display);
    if (cfg->bind_address == NULL || cfg->shm_path == NULL || cfg->file == NULL)
        goto nomem;
    rv = config_extract(cfg, doc, &errs);
    if (rv != FB_OK)
        goto out;
    *pcfg = cfg;
    cfg = NULL;
    goto out;
nomem:
    rv = FB_ERR_NOMEM;
    config_error_at(&errs, display, 0, "out of memory");
out:
    config_errors_finish(&errs);
    config_handlers_restore(&saved);
    if (rv != FB_OK && errs.count == 0)
        config_error_at(&errs, display, 0, "%s", fb_err_message(rv));
    fb_config_free(cfg);
    if (doc != NULL)
        xmlFreeDoc(doc);
    return rv;
}

fb_err fb_config_load(fb_config **pcfg, const char *path, const char *schema, char *errbuf, size_t errlen)
{
    if (pcfg == NULL || path == NULL || path[0] == '\0') {
        if (errbuf != NULL && errlen > 0)
            snprintf(errbuf, errlen, "fb_config_load: no configuration file named");
        if (pcfg != NULL)
            *pcfg = NULL;
        return FB_ERR_CONFIG;
    }
    return config_load_named(pcfg, path, path, schema, errbuf, errlen);
}

const char *fb_config_docroot(const fb_config *cfg, const char *user, const char *const *groups)
{
    if (cfg == NULL)
        return NULL;
    if (user != NULL)
        for (unsigned i = 0; i < cfg->ndocroots; i++)
            if (cfg->docroots[i].user != NULL && strcmp(cfg->docroots[i].user, user) == 0)
                return cfg->docroots[i].docroot;
    if (groups != NULL)
        for (unsigned i = 0; i < cfg->ndocroots; i++) {
            if (cfg->docroots[i].group == NULL)
                continue;
            for (const char *const *g = groups; *g != NULL; g++)
                if (strcmp(cfg->docroots[i].group, *g) == 0)
                    return cfg->docroots[i].docroot;
        }
    for (unsigned i = 0; i < cfg->ndocroots; i++)
        if (cfg->docroots[i].user == NULL && cfg->docroots[i].group == NULL)
            return cfg->docroots[i].docroot;
    return NULL;
}

const char *fb_config_policy_name(unsigned policy)
{
    for (unsigned i = 0; i < 4; i++)
        if (policy == 1u << i)
            return config_policy_names[i];
    return "unknown";
}

const char *fb_config_cipher_name(unsigned cipher)
{
    for (unsigned i = 0; i < 3; i++)
        if (cipher == 1u << i)
            return config_cipher_names[i];
    return "unknown";
}

#define CONFIG_NSS_BUF_MAX (1024 * 1024) /* largest getpwnam_r/getgrgid_r buffer tried */
#define CONFIG_MAX_GROUPS 65536          /* NGROUPS_MAX on Linux */

/* Names of the groups GIDS (those NSS knows), as a NULL-terminated malloc'd array of malloc'd
 * strings; NULL when out of memory. One lookup per group, whatever the number of entries. */
static char **config_group_names(const gid_t *gids, int n)
{
    size_t buflen = 4096;
    char *buf = malloc(buflen);
    char **names = calloc((size_t)n + 1, sizeof(*names));
    int k, count = 0;

    if (buf == NULL || names == NULL) {
        free(buf);
        free(names);
        return NULL;
    }
    for (k = 0; k < n; k++) {
        struct group gr, *res = NULL;
        int rc;

        while ((rc = getgrgid_r(gids[k], &gr, buf, buflen, &res)) == ERANGE && buflen < CONFIG_NSS_BUF_MAX) {
            char *nb = realloc(buf, buflen * 2);
            if (nb == NULL)
                break;
            buf = nb;
            buflen *= 2;
        }
        if (rc == 0 && res != NULL && (names[count] = strdup(gr.gr_name)) != NULL)
            count++;
    }
    free(buf);
    return names;
}

static void config_free_names(char **names)
{
    for (char **p = names; p != NULL && *p != NULL; p++)
        free(*p);
    free(names);
}

/* USER's groups (primary included) from NSS, as config_group_names; NULL if USER is unknown. */
static char **config_user_groups(const char *user)
{
    size_t buflen = 4096;
    char *buf = malloc(buflen);
    struct passwd pw, *res = NULL;
    char **names = NULL;
    gid_t *gids = NULL;
    int rc = ENOMEM, n = 64;

    while (buf != NULL && (rc = getpwnam_r(user, &pw, buf, buflen, &res)) == ERANGE &&
           buflen < CONFIG_NSS_BUF_MAX) {
        char *nb = realloc(buf, buflen * 2);
        if (nb == NULL)
            break;
        buf = nb;
        buflen *= 2;
    }
    if (rc != 0 || res == NULL)
        goto out;
    gids = malloc((size_t)n * sizeof(*gids));
    /* Too small an array: getgrouplist sets N to the count needed; one more round suffices. */
    if (gids != NULL && getgrouplist(user, pw.pw_gid, gids, &n) < 0) {
        gid_t *ng = n > 64 && n <= CONFIG_MAX_GROUPS ? realloc(gids, (size_t)n * sizeof(*gids)) : NULL;
        if (ng == NULL)
            goto out;
        gids = ng;
        if (getgrouplist(user, pw.pw_gid, gids, &n) < 0)
            goto out;
    }
    if (gids != NULL)
        names = config_group_names(gids, n);
out:
    free(gids);
    free(buf);
    return names;
}

const char *fb_config_docroot_for_user(const fb_config *cfg, const char *user)
{
    int has_groups = 0;
    char **groups = NULL;
    const char *found;

    if (cfg == NULL)
        return NULL;
    for (unsigned i = 0; i < cfg->ndocroots; i++) {
        if (user != NULL && cfg->docroots[i].user != NULL && strcmp(cfg->docroots[i].user, user) == 0)
            return cfg->docroots[i].docroot;
        has_groups |= cfg->docroots[i].group != NULL;
    }
    /* No <user> entry: the first <group> naming one of the user's groups, else <default>. */
    if (has_groups && user != NULL && user[0] != '\0')
        groups = config_user_groups(user);
    found = fb_config_docroot(cfg, NULL, (const char *const *)groups);
    config_free_names(groups);
    return found;
}

static void config_print_list(FILE *out, const char *key, unsigned bits, const char *const *names, unsigned n)
{
    fprintf(out, "%s = ", key);
    int first = 1;
    for (unsigned i = 0; i < n; i++)
        if (bits & (1u << i)) {
            fprintf(out, "%s%s", first ? "" : ",", names[i]);
            first = 0;
        }
    fputc('\n', out);
}

void fb_config_print(const fb_config *cfg, FILE *out)
{
    fprintf(out, "file = %s\n", cfg->file != NULL ? cfg->file : "(defaults)");
    fprintf(out, "version = %d\n", cfg->version);
    fprintf(out, "http_server.http_port = %d\n", cfg->http_port);
    fprintf(out, "http_server.https_port = %d\n", cfg->https_port);
    fprintf(out, "http_server.enable_http = %s\n", cfg->enable_http ? "true" : "false");
    fprintf(out, "http_server.enable_https = %s\n", cfg->enable_https ? "true" : "false");
    fprintf(out, "udp.port = %d\n", cfg->udp_port);
    fprintf(out, "udp.bind_address = %s\n", cfg->bind_address != NULL ? cfg->bind_address : "::");
    fprintf(out, "transfer.target_rate_cap_kbps = %llu\n", (unsigned long long)cfg->target_rate_cap_kbps);
    fprintf(out, "transfer.min_rate_cap_kbps = %llu\n", (unsigned long long)cfg->min_rate_cap_kbps);
    config_print_list(out, "transfer.allowed_policies", cfg->allowed_policies, config_policy_names, 4);
    config_print_list(out, "transfer.allowed_ciphers", cfg->allowed_ciphers, config_cipher_names, 3);
    fprintf(out, "transfer.content_protection_required = %s\n",
            cfg->content_protection_required ? "true" : "false");
    fprintf(out, "transfer.chunk_size = %u\n", (unsigned)cfg->chunk_size);
    fprintf(out, "transfer.max_file_size = %llu\n", (unsigned long long)cfg->max_file_size);
    fprintf(out, "transfer.file_mode = %04o\n", cfg->file_mode);
    fprintf(out, "sessions.shm_path = %s\n", cfg->shm_path != NULL ? cfg->shm_path : FB_DEFAULT_SHM_PATH);
    fprintf(out, "sessions.max_sessions = %u\n", (unsigned)cfg->max_sessions);
    fprintf(out, "sessions.max_sessions_per_user = %u\n", (unsigned)cfg->max_sessions_per_user);
    fprintf(out, "sessions.idle_timeout = %u\n", (unsigned)cfg->idle_timeout);
    fprintf(out, "sessions.done_linger = %u\n", (unsigned)cfg->done_linger);
    fprintf(out, "sessions.max_json_body = %u\n", (unsigned)cfg->max_json_body);
    if (cfg->ndocroots == 0)
        fprintf(out, "docroots = (none: every user is refused)\n");
    for (unsigned i = 0; i < cfg->ndocroots; i++) {
        const fb_docroot *d = &cfg->docroots[i];
        if (d->user != NULL)
            fprintf(out, "docroots.user.%s = %s\n", d->user, d->docroot);
        else if (d->group != NULL)
            fprintf(out, "docroots.group.%s = %s\n", d->group, d->docroot);
        else
            fprintf(out, "docroots.default = %s\n", d->docroot);
    }
}

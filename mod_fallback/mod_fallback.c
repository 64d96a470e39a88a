/* mod_fallback.c: the module's glue. Directives (FallbackConfig, FallbackSchema, FallbackDaemon*),
 * per-server config, startup (load fallback.xml, check Apache's listeners against it so
 * `apachectl configtest` fails on a mismatch, attach the shared session table in the parent so
 * children inherit the mapping, start udpd when asked) and the router that hands each request of
 * the "fallback" handler to the route it names. The routes themselves live in
 * mod_fallback_{sessions,data,files}.c, the udpd supervision in mod_fallback_daemon.c. */

#define MOD_FALLBACK_MAIN 1
#include "mod_fallback_private.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "apr_hash.h"
#include "apr_network_io.h"
#include "apr_strings.h"

#include "ap_listen.h"
#include "ap_mmn.h"
#include "http_core.h"
#include "http_main.h"
#include "http_protocol.h"
#include "http_request.h"
#include "unixd.h"
#include "util_cfgtree.h"
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 102)
#include "http_ssl.h" /* ap_ssl_conn_is_ssl, 2.4.47 and later */
#else
#include "apr_optional.h"
APR_DECLARE_OPTIONAL_FN(int, ssl_is_https, (conn_rec *));
#endif

extern module AP_MODULE_DECLARE_DATA fallback_module;

#define MOD_FALLBACK_STATES_KEY "mod_fallback.states"

/* URL paths of the <Location> sections that say "SetHandler fallback", read from the config
 * tree at startup (pconf; children inherit it). They tell the router exactly where its URL
 * space begins, even below nested <Location>s. */
static apr_array_header_t *handler_locations;

/* ---- configuration ------------------------------------------------------------------------ */

static void *fallback_create_server_conf(apr_pool_t *p, server_rec *s)
{
    mod_fallback_server_conf *conf = apr_pcalloc(p, sizeof(*conf));
    (void)s;
    conf->daemon_on = -1;
    return conf;
}

static void *fallback_merge_server_conf(apr_pool_t *p, void *basev, void *addv)
{
    const mod_fallback_server_conf *base = basev;
    const mod_fallback_server_conf *add = addv;
    mod_fallback_server_conf *conf = apr_pcalloc(p, sizeof(*conf));

    conf->config_file = add->config_file ? add->config_file : base->config_file;
    conf->schema_file = add->schema_file ? add->schema_file : base->schema_file;
    conf->daemon_on = add->daemon_on != -1 ? add->daemon_on : base->daemon_on;
    conf->daemon_path = add->daemon_path ? add->daemon_path : base->daemon_path;
    conf->daemon_user = add->daemon_user ? add->daemon_user : base->daemon_user;
    return conf;
}

static const char *set_config_file(cmd_parms *cmd, void *dconf, const char *arg)
{
    mod_fallback_server_conf *conf = ap_get_module_config(cmd->server->module_config, &fallback_module);
    const char *path = ap_server_root_relative(cmd->pool, arg);

    (void)dconf;
    if (path == NULL)
        return apr_pstrcat(cmd->pool, "FallbackConfig: invalid path '", arg, "'", NULL);
    conf->config_file = path;
    return NULL;
}

static const char *set_schema_file(cmd_parms *cmd, void *dconf, const char *arg)
{
    mod_fallback_server_conf *conf = ap_get_module_config(cmd->server->module_config, &fallback_module);
    const char *path = ap_server_root_relative(cmd->pool, arg);

    (void)dconf;
    if (path == NULL)
        return apr_pstrcat(cmd->pool, "FallbackSchema: invalid path '", arg, "'", NULL);
    conf->schema_file = path;
    return NULL;
}

static const char *set_daemon(cmd_parms *cmd, void *dconf, int on)
{
    mod_fallback_server_conf *conf = ap_get_module_config(cmd->server->module_config, &fallback_module);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    (void)dconf;
    if (err != NULL)
        return err;
    conf->daemon_on = on ? 1 : 0;
    return NULL;
}

static const char *set_daemon_path(cmd_parms *cmd, void *dconf, const char *arg)
{
    mod_fallback_server_conf *conf = ap_get_module_config(cmd->server->module_config, &fallback_module);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    const char *path;

    (void)dconf;
    if (err != NULL)
        return err;
    path = ap_server_root_relative(cmd->pool, arg);
    if (path == NULL)
        return apr_pstrcat(cmd->pool, "FallbackDaemonPath: invalid path '", arg, "'", NULL);
    conf->daemon_path = path;
    return NULL;
}

static const char *set_daemon_user(cmd_parms *cmd, void *dconf, const char *arg)
{
    mod_fallback_server_conf *conf = ap_get_module_config(cmd->server->module_config, &fallback_module);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    (void)dconf;
    if (err != NULL)
        return err;
    /* udpd resolves the name itself; refuse only what cannot be a user name. */
    if (arg[0] == '\0' || arg[0] == '-' || strlen(arg) > 64)
        return apr_pstrcat(cmd->pool, "FallbackDaemonUser: invalid user name '", arg, "'", NULL);
    conf->daemon_user = arg;
    return NULL;
}

static const command_rec fallback_cmds[] = {
    AP_INIT_TAKE1("FallbackConfig", set_config_file, NULL, RSRC_CONF,
                  "Path of fallback.xml, the configuration shared with udpd and fbctl (default "
                  FB_DEFAULT_CONFIG_FILE ")"),
    AP_INIT_TAKE1("FallbackSchema", set_schema_file, NULL, RSRC_CONF,
                  "Path of the XML schema fallback.xml is validated against (default: the installed "
                  "fallback.xsd)"),
    AP_INIT_FLAG("FallbackDaemon", set_daemon, NULL, RSRC_CONF,
                 "On: the Apache parent starts udpd, restarts it when it dies, keeps it across graceful "
                 "restarts and stops it with Apache (default Off)"),
    AP_INIT_TAKE1("FallbackDaemonPath", set_daemon_path, NULL, RSRC_CONF,
                  "Path of the udpd program started by FallbackDaemon on (default " FB_SBINDIR "/udpd)"),
    AP_INIT_TAKE1("FallbackDaemonUser", set_daemon_user, NULL, RSRC_CONF,
                  "User udpd switches to after binding its port (default: Apache's User)"),
    {NULL},
};

/* ---- startup -------------------------------------------------------------------------------- */

static apr_status_t cleanup_config(void *data)
{
    mod_fallback_state *st = data;

    if (st->cfg != NULL) {
        fb_config_free(st->cfg);
        st->cfg = NULL;
    }
    return APR_SUCCESS;
}

/* Only unmaps: the table must survive restarts, graceful or not, and old-generation children
 * keep their own inherited mapping. */
static apr_status_t cleanup_table(void *data)
{
    mod_fallback_state *st = data;

    if (st->table != NULL) {
        fb_table_close(st->table);
        st->table = NULL;
    }
    return APR_SUCCESS;
}

static const char *server_config_file(const mod_fallback_server_conf *conf)
{
    return conf->config_file ? conf->config_file : FB_DEFAULT_CONFIG_FILE;
}

/* Loads every distinct fallback.xml named by the servers once per configuration cycle and
 * points each server's config at it. Kept in pconf userdata so post_config reuses what
 * check_config loaded. */
static int load_states(apr_hash_t **pstates, apr_pool_t *pconf, server_rec *s)
{
    apr_hash_t *states = NULL;
    server_rec *vs;

    apr_pool_userdata_get((void **)&states, MOD_FALLBACK_STATES_KEY, pconf);
    if (states == NULL) {
        states = apr_hash_make(pconf);
        apr_pool_userdata_set(states, MOD_FALLBACK_STATES_KEY, apr_pool_cleanup_null, pconf);
    }
    for (vs = s; vs != NULL; vs = vs->next) {
        mod_fallback_server_conf *conf = ap_get_module_config(vs->module_config, &fallback_module);
        const char *file = server_config_file(conf);
        mod_fallback_state *st = apr_hash_get(states, file, APR_HASH_KEY_STRING);

        if (st == NULL) {
            char errbuf[1024] = "";
            fb_err e;

            st = apr_pcalloc(pconf, sizeof(*st));
            st->config_file = apr_pstrdup(pconf, file);
            e = fb_config_load(&st->cfg, st->config_file, conf->schema_file, errbuf, sizeof(errbuf));
            if (e != FB_OK) {
                ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, NULL,
                             FBLOGNO(00001) "mod_fallback: cannot load %s: %s", st->config_file,
                             errbuf[0] ? errbuf : fb_err_message(e));
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            apr_pool_cleanup_register(pconf, st, cleanup_config, apr_pool_cleanup_null);
            apr_hash_set(states, st->config_file, APR_HASH_KEY_STRING, st);
        }
        conf->state = st;
    }
    *pstates = states;
    return OK;
}

/* What Apache's configuration tree says about ports and TLS. */
typedef struct listen_info {
    apr_array_header_t *listen_ports; /* int */
    apr_array_header_t *ssl_ports;    /* int: ports of vhosts with SSLEngine on; 0 = any port */
    int global_ssl;                   /* SSLEngine on in the main server */
} listen_info;

static int port_of(apr_pool_t *p, const char *word, int *pport)
{
    char *host = NULL, *scope = NULL;
    apr_port_t port = 0;

    if (apr_parse_addr_port(&host, &scope, &port, word, p) != APR_SUCCESS)
        return 0;
    *pport = port; /* 0: no port given */
    return 1;
}

/* SSLEngine is a server-scope directive, so within a <VirtualHost> it can only be a direct
 * child (conditional sections such as <IfModule> are flattened while the tree is read). */
static int section_has_ssl_on(apr_pool_t *p, const ap_directive_t *d)
{
    int on = 0;

    for (; d != NULL; d = d->next) {
        if (strcasecmp(d->directive, "SSLEngine") == 0) {
            const char *args = d->args;
            char *w = ap_getword_conf(p, &args);
            on = strcasecmp(w, "on") == 0; /* the last one wins, as in mod_ssl */
        }
    }
    return on;
}

static void walk_conftree(listen_info *li, apr_pool_t *p, const ap_directive_t *d, int depth)
{
    /* The tree is finite and acyclic; the depth bound only guards against surprises. */
    if (depth > 64)
        return;
    for (; d != NULL; d = d->next) {
        if (strcasecmp(d->directive, "Listen") == 0) {
            const char *args = d->args;
            char *w = ap_getword_conf(p, &args);
            int port = 0;

            if (port_of(p, w, &port) && port > 0)
                APR_ARRAY_PUSH(li->listen_ports, int) = port;
        }
        else if (strcasecmp(d->directive, "SSLEngine") == 0 && depth == 0) {
            const char *args = d->args;
            char *w = ap_getword_conf(p, &args);
            li->global_ssl = strcasecmp(w, "on") == 0;
        }
        else if (strcasecmp(d->directive, "<VirtualHost") == 0) {
            char *args = apr_pstrdup(p, d->args);
            char *gt = strrchr(args, '>');
            const char *rest = args;

            if (gt != NULL)
                *gt = '\0';
            if (section_has_ssl_on(p, d->first_child)) {
                int guard;
                for (guard = 0; *rest != '\0' && guard < 256; guard++) {
                    char *w = ap_getword_conf(p, &rest);
                    int port = 0;

                    if (*w == '\0')
                        break;
                    if (port_of(p, w, &port))
                        APR_ARRAY_PUSH(li->ssl_ports, int) = port;
                }
            }
        }
        else if (d->first_child != NULL) {
            walk_conftree(li, p, d->first_child, depth + 1);
        }
    }
}

static int array_has_port(const apr_array_header_t *a, int port, int zero_matches)
{
    int i;

    for (i = 0; i < a->nelts; i++) {
        int v = APR_ARRAY_IDX(a, i, int);
        if (v == port || (zero_matches && v == 0))
            return 1;
    }
    return 0;
}

/* fallback.xml and Apache must agree on the fallback ports, or clients would be told about a
 * port nobody serves. */
static int check_listeners(apr_pool_t *ptemp, const mod_fallback_state *st)
{
    const fb_config *cfg = st->cfg;
    listen_info li;
    int ok = 1;

    li.listen_ports = apr_array_make(ptemp, 8, sizeof(int));
    li.ssl_ports = apr_array_make(ptemp, 8, sizeof(int));
    li.global_ssl = 0;
    walk_conftree(&li, ptemp, ap_conftree, 0);

    if (cfg->enable_https) {
        if (!array_has_port(li.listen_ports, cfg->https_port, 0)) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, NULL,
                         FBLOGNO(00010) "mod_fallback: %s says https_port %d but Apache has no Listen on "
                         "port %d; add 'Listen %d https' or run 'fbctl set-port https N'",
                         st->config_file, cfg->https_port, cfg->https_port, cfg->https_port);
            ok = 0;
        }
        else if (!li.global_ssl && !array_has_port(li.ssl_ports, cfg->https_port, 1)) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, NULL,
                         FBLOGNO(00011) "mod_fallback: %s says https_port %d but no <VirtualHost *:%d> "
                         "has 'SSLEngine on'; enable TLS on that port or run 'fbctl set-port https N'",
                         st->config_file, cfg->https_port, cfg->https_port);
            ok = 0;
        }
    }
    if (cfg->enable_http && !array_has_port(li.listen_ports, cfg->http_port, 0)) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, NULL,
                     FBLOGNO(00012) "mod_fallback: %s says http_port %d but Apache has no Listen on port "
                     "%d; add 'Listen %d' or run 'fbctl set-port http N'",
                     st->config_file, cfg->http_port, cfg->http_port, cfg->http_port);
        ok = 0;
    }
    return ok;
}

static int is_fallback_handler_section(apr_pool_t *p, const ap_directive_t *d)
{
    for (; d != NULL; d = d->next) {
        if (strcasecmp(d->directive, "SetHandler") == 0) {
            const char *args = d->args;
            char *w = ap_getword_conf(p, &args);
            if (strcasecmp(w, "fallback") == 0)
                return 1;
        }
    }
    return 0;
}

static void collect_locations(apr_array_header_t *out, apr_pool_t *p, const ap_directive_t *d, int depth)
{
    if (depth > 64)
        return;
    for (; d != NULL; d = d->next) {
        if (strcasecmp(d->directive, "<Location") == 0 && is_fallback_handler_section(p, d->first_child)) {
            char *args = apr_pstrdup(p, d->args);
            char *gt = strrchr(args, '>');
            const char *rest = args;
            char *path;
            size_t n;

            if (gt != NULL)
                *gt = '\0';
            path = ap_getword_conf(p, &rest);
            n = strlen(path);
            while (n > 0 && path[n - 1] == '/')
                path[--n] = '\0';
            if (path[0] == '/' || path[0] == '\0')
                APR_ARRAY_PUSH(out, const char *) = path;
        }
        else if (d->first_child != NULL) {
            collect_locations(out, p, d->first_child, depth + 1);
        }
    }
}

static void table_opts(fb_table_opts *opts, const fb_config *cfg, int create)
{
    memset(opts, 0, sizeof(*opts));
    opts->nslots = cfg->max_sessions;
    opts->create = create;
    if (geteuid() == 0) {
        /* The parent runs as root; the children run as User/Group and must map it. */
        opts->owner_uid = ap_unixd_config.user_id;
        opts->owner_gid = ap_unixd_config.group_id;
        opts->trusted_uid = ap_unixd_config.user_id;
    }
    else {
        opts->owner_uid = (uid_t)-1;
        opts->owner_gid = (gid_t)-1;
        opts->trusted_uid = geteuid();
    }
}

/* Runs for `apache2 -t` as well as before every (re)start; returning an error makes both fail,
 * which is what an admin needs to see while the terminal is still attached. */
static int fallback_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    apr_hash_t *states;
    apr_hash_index_t *hi;
    int rc, ok = 1;

    (void)plog;
    rc = load_states(&states, pconf, s);
    /* `apache2 -M` / `-S` only list the configuration: report, but let them list. */
    if (rc != OK)
        return ap_state_query(AP_SQ_RUN_MODE) == AP_SQ_RM_CONFIG_DUMP ? OK : rc;
    for (hi = apr_hash_first(ptemp, states); hi != NULL; hi = apr_hash_next(hi)) {
        mod_fallback_state *st = apr_hash_this_val(hi);
        struct stat sb;

        if (!check_listeners(ptemp, st))
            ok = 0;
        /* An existing table of a foreign version or with unsafe permissions is reported here;
         * a missing one is created in post_config. */
        if (stat(st->cfg->shm_path, &sb) == 0) {
            fb_table_opts opts;
            fb_table *t = NULL;
            char errbuf[512] = "";
            fb_err e;

            table_opts(&opts, st->cfg, 0);
            e = fb_table_open(&t, st->cfg->shm_path, &opts, errbuf, sizeof(errbuf));
            if (e != FB_OK) {
                ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, NULL,
                             FBLOGNO(00013) "mod_fallback: session table %s (from %s) unusable: %s",
                             st->cfg->shm_path, st->config_file, errbuf[0] ? errbuf : fb_err_message(e));
                ok = 0;
            }
            else {
                fb_table_close(t);
            }
        }
    }
    if (mod_fallback_daemon_check(s) != OK)
        ok = 0;
    if (!ok) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, NULL,
                     FBLOGNO(00014) "mod_fallback: configuration check failed");
        return ap_state_query(AP_SQ_RUN_MODE) == AP_SQ_RM_CONFIG_DUMP ? OK : HTTP_INTERNAL_SERVER_ERROR;
    }
    return OK;
}

static int fallback_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    apr_hash_t *states;
    apr_hash_index_t *hi;
    int rc;

    (void)plog;
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG)
        return OK;
    handler_locations = apr_array_make(pconf, 4, sizeof(const char *));
    collect_locations(handler_locations, pconf, ap_conftree, 0);
    rc = load_states(&states, pconf, s);
    if (rc != OK)
        return rc;
    for (hi = apr_hash_first(ptemp, states); hi != NULL; hi = apr_hash_next(hi)) {
        mod_fallback_state *st = apr_hash_this_val(hi);
        fb_table_opts opts;
        char errbuf[512] = "";
        fb_err e;

        if (st->table != NULL)
            continue;
        /* Attach, or create if missing. Never re-create or zero: live sessions of the previous
         * generation and udpd use it. */
        table_opts(&opts, st->cfg, 1);
        e = fb_table_open(&st->table, st->cfg->shm_path, &opts, errbuf, sizeof(errbuf));
        if (e != FB_OK) {
            ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s,
                         FBLOGNO(00015) "mod_fallback: cannot open session table %s (from %s): %s",
                         st->cfg->shm_path, st->config_file, errbuf[0] ? errbuf : fb_err_message(e));
            st->table = NULL;
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        apr_pool_cleanup_register(pconf, st, cleanup_table, apr_pool_cleanup_null);
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     FBLOGNO(00016) "mod_fallback: session table %s attached (%u slots), config %s",
                     st->cfg->shm_path, fb_table_nslots(st->table), st->config_file);
    }
    /* Last: the session table exists (udpd attaches to it) and nothing after this can fail. */
    return mod_fallback_daemon_post_config(pconf, ptemp, s);
}

/* ---- routing ------------------------------------------------------------------------------ */

/* True if REM (the URL after the base, without its leading '/') names a route family. */
static int is_route(const char *rem)
{
    return (strncmp(rem, "sessions", 8) == 0 && (rem[8] == '\0' || rem[8] == '/')) ||
           (strncmp(rem, "files", 5) == 0 && (rem[5] == '\0' || rem[5] == '/'));
}

/* Finds where the handler's URL space begins: the longest <Location> with "SetHandler
 * fallback" that prefixes r->uri. For handlers set some other way (<LocationMatch>, .htaccess)
 * a guess: the innermost section (core's per-dir "d") bounds the base, which is the longest
 * prefix of r->uri within that bound, at a '/' boundary, after which a route starts. */
static const char *find_base(request_rec *r, const char **prem)
{
    const core_dir_config *dconf = ap_get_core_module_config(r->per_dir_config);
    const char *uri = r->uri;
    size_t ulen = strlen(uri);
    size_t bound = ulen;
    size_t i, best = 0;
    const char *found = NULL;

    for (i = 0; handler_locations != NULL && i < (size_t)handler_locations->nelts; i++) {
        const char *loc = APR_ARRAY_IDX(handler_locations, (int)i, const char *);
        size_t n = strlen(loc);

        if (strncmp(uri, loc, n) == 0 && (uri[n] == '\0' || uri[n] == '/') && (found == NULL || n > best)) {
            found = loc;
            best = n;
        }
    }
    if (found != NULL) {
        const char *rem = uri + best;
        if (*rem == '/')
            rem++;
        *prem = rem;
        return found;
    }

    if (dconf != NULL && dconf->d != NULL && dconf->d[0] == '/') {
        size_t dlen = strlen(dconf->d);
        while (dlen > 0 && dconf->d[dlen - 1] == '/')
            dlen--;
        if (strncmp(uri, dconf->d, dlen) == 0 && (uri[dlen] == '\0' || uri[dlen] == '/'))
            bound = dlen;
    }
    /* Bounded by the URI length. */
    for (i = bound + 1; i-- > 0;) {
        if (i == ulen || uri[i] == '/') {
            const char *rem = uri + i;
            if (*rem == '/')
                rem++;
            if (is_route(rem)) {
                *prem = rem;
                return apr_pstrmemdup(r->pool, uri, i);
            }
        }
    }
    return NULL;
}

static int method_not_allowed(mod_fallback_req *req, const char *allow)
{
    apr_table_setn(req->r->headers_out, "Allow", allow);
    return mod_fallback_problem(req, FB_ERR_METHOD, apr_pstrcat(req->r->pool, "allowed: ", allow, NULL));
}

static int route(mod_fallback_req *req, const char *rem)
{
    request_rec *r = req->r;
    int m = r->method_number; /* HEAD arrives as M_GET with r->header_only */

    if (strcmp(rem, "sessions") == 0) {
        if (m != M_POST)
            return method_not_allowed(req, "POST");
        return mod_fallback_sessions_create(req);
    }
    if (strncmp(rem, "sessions/", 9) == 0) {
        const char *id = rem + 9;
        const char *slash = strchr(id, '/');

        if (slash == NULL) {
            if (*id == '\0')
                return mod_fallback_problem(req, FB_ERR_NOT_FOUND, NULL);
            if (m == M_GET)
                return mod_fallback_sessions_get(req, id);
            if (m == M_DELETE)
                return mod_fallback_sessions_delete(req, id);
            return method_not_allowed(req, "GET, HEAD, DELETE");
        }
        id = apr_pstrmemdup(r->pool, id, (apr_size_t)(slash - id));
        if (strcmp(slash + 1, "data") == 0) {
            if (m == M_GET)
                return mod_fallback_files_session_data(req, id);
            if (m != M_PUT)
                return method_not_allowed(req, "GET, HEAD, PUT");
            return mod_fallback_data_put(req, id);
        }
        if (strcmp(slash + 1, "commit") == 0) {
            if (m != M_POST)
                return method_not_allowed(req, "POST");
            return mod_fallback_sessions_commit(req, id);
        }
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, NULL);
    }
    if (!is_route(rem))
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, NULL);
    /* files or files/...: the rest of r->uri, already %-decoded by Apache */
    if (m == M_MKCOL)
        return mod_fallback_files_mkcol(req, rem[5] == '/' ? rem + 6 : rem + 5);
    if (m != M_GET)
        return method_not_allowed(req, "GET, HEAD, MKCOL");
    return mod_fallback_files_get(req, rem[5] == '/' ? rem + 6 : rem + 5);
}

/* Whether R came over TLS, as mod_ssl (or any TLS module hooked into ap_ssl_conn_is_ssl) says. */
static int request_is_tls(request_rec *r)
{
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 102)
    return ap_ssl_conn_is_ssl(r->connection);
#else
    APR_OPTIONAL_FN_TYPE(ssl_is_https) *is_https = APR_RETRIEVE_OPTIONAL_FN(ssl_is_https);
    return is_https != NULL && is_https(r->connection);
#endif
}

/* enable_http / enable_https: a request over a scheme the configuration turned off is refused
 * before any route runs, so nothing (above all no session key) is ever answered over it, on
 * whatever port or virtual host it arrived. Returns 1 after answering the refusal. */
static int refuse_disabled_scheme(mod_fallback_req *req)
{
    int tls = request_is_tls(req->r);
    const char *setting;

    if (tls ? req->cfg->enable_https : req->cfg->enable_http)
        return 0;
    setting = tls ? "enable_https" : "enable_http";
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, req->r,
                  FBLOGNO(00022) "request over %s refused: %s is false in %s", tls ? "HTTPS" : "plain HTTP",
                  setting, req->state->config_file);
    (void)mod_fallback_problem_ext(
        req, FB_ERR_PERMISSION,
        apr_psprintf(req->r->pool, "%s is not served here: %s is false in the server's fallback.xml%s",
                     tls ? "HTTPS" : "plain HTTP", setting,
                     tls ? "" : "; use https:// (session keys never cross plain HTTP)"),
        json_pack("{s:s}", "setting", setting));
    return 1;
}

static int fallback_handler(request_rec *r)
{
    mod_fallback_server_conf *conf;
    mod_fallback_req *req;
    const char *rem = NULL;

    if (r->handler == NULL || strcmp(r->handler, "fallback") != 0)
        return DECLINED;

    req = apr_pcalloc(r->pool, sizeof(*req));
    req->r = r;
    req->docroot_fd = -1;
    req->user = r->user ? r->user : "";

    conf = ap_get_module_config(r->server->module_config, &fallback_module);
    if (conf == NULL || conf->state == NULL || conf->state->table == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      FBLOGNO(00020) "mod_fallback: no session table for this server (startup failed?)");
        return mod_fallback_problem(req, FB_ERR_INTERNAL, NULL);
    }
    req->state = conf->state;
    req->cfg = conf->state->cfg;
    req->table = conf->state->table;
    if (refuse_disabled_scheme(req))
        return OK;

    req->base = find_base(r, &rem);
    if (req->base == NULL)
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, NULL);
    ap_log_rerror(APLOG_MARK, APLOG_TRACE1, 0, r, FBLOGNO(00021) "route base '%s' rest '%s' user '%s'",
                  req->base, rem, req->user);
    return route(req, rem);
}

static void fallback_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_check_config(fallback_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(fallback_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(fallback_handler, NULL, NULL, APR_HOOK_MIDDLE);
    mod_fallback_status_register();
    mod_fallback_daemon_register_hooks();
}

AP_DECLARE_MODULE(fallback) = {
    STANDARD20_MODULE_STUFF,
    NULL,                        /* per-directory config creator */
    NULL,                        /* dir config merger */
    fallback_create_server_conf, /* server config creator */
    fallback_merge_server_conf,  /* server config merger */
    fallback_cmds,               /* command table */
    fallback_register_hooks,     /* hook registration */
    0,                           /* flags */
};

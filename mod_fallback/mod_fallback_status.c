/* mod_fallback_status.c: session counts for mod_status (/server-status, and ?auto for
 * scripts: "FallbackSessionsActive: N" lines). Reads the shared table with plain atomic loads;
 * never blocks. Only active when mod_status is loaded. */

#include "mod_fallback_private.h"

#include "apr_optional_hooks.h"
#include "http_protocol.h"
#include "mod_status.h"

static int fallback_status_hook(request_rec *r, int flags)
{
    mod_fallback_server_conf *conf = ap_get_module_config(r->server->module_config, &fallback_module);
    static const char *const names[] = {"Free", "Claimed", "Active", "Finalising", "Done", "Failed"};
    apr_uint64_t counts[6] = {0, 0, 0, 0, 0, 0};
    uint32_t i, n;

    if (conf == NULL || conf->state == NULL || conf->state->table == NULL)
        return OK;
    n = fb_table_nslots(conf->state->table);
    for (i = 0; i < n; i++) {
        uint32_t st = atomic_load(&fb_table_slot(conf->state->table, i)->state);
        if (st < 6)
            counts[st]++;
    }
    if (flags & AP_STATUS_SHORT) {
        for (i = 0; i < 6; i++)
            ap_rprintf(r, "FallbackSessions%s: %" APR_UINT64_T_FMT "\n", names[i], counts[i]);
        return OK;
    }
    ap_rputs("<hr />\n<h2>mod_fallback sessions</h2>\n<table border=\"0\">\n", r);
    for (i = 0; i < 6; i++)
        ap_rprintf(r, "<tr><td>%s</td><td>%" APR_UINT64_T_FMT "</td></tr>\n", names[i], counts[i]);
    ap_rprintf(r, "</table>\n<p>%u slots in %s</p>\n", n, ap_escape_html(r->pool, conf->state->cfg->shm_path));
    return OK;
}

void mod_fallback_status_register(void)
{
    APR_OPTIONAL_HOOK(ap, status_hook, fallback_status_hook, NULL, NULL, APR_HOOK_MIDDLE);
}

/* fb_config: the one configuration file, fallback.xml, read by mod_fallback, udpd and fbctl.
 *
 * Parsed with libxml2 and validated against the shipped XML schema (fallback.xsd); every
 * error names the file and line. Values not given take the documented defaults. */
#ifndef FB_CONFIG_H
#define FB_CONFIG_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "fb_err.h"

#define FB_DEFAULT_CONFIG_FILE "/etc/fallback/fallback.xml"
#define FB_DEFAULT_SCHEMA_FILE "/usr/share/fallback/fallback.xsd"
#define FB_DEFAULT_HTTP_PORT 8080
#define FB_DEFAULT_HTTPS_PORT 8443
#define FB_DEFAULT_UDP_PORT 33001
#define FB_DEFAULT_CHUNK_SIZE (1024u * 1024u)
#define FB_DEFAULT_MAX_SESSIONS 256
#define FB_DEFAULT_SHM_PATH "/dev/shm/fallback-sessions"
#define FB_DEFAULT_IDLE_TIMEOUT 86400 /* seconds an unfinished session stays in the table */
#define FB_DEFAULT_DONE_LINGER 300    /* seconds a finished session stays visible */
#define FB_DEFAULT_MAX_JSON_BODY 65536
#define FB_DEFAULT_FILE_MODE 0644

/* Policies a client may ask for (bit set). */
enum fb_policy { FB_POLICY_FIXED = 1, FB_POLICY_HIGH = 2, FB_POLICY_FAIR = 4, FB_POLICY_LOW = 8 };
/* Ciphers (bit set). */
enum fb_cipher { FB_CIPHER_NONE = 1, FB_CIPHER_AES128_GCM = 2, FB_CIPHER_AES256_GCM = 4 };

typedef struct fb_docroot {
    char *user;    /* NULL for the default entry */
    char *group;   /* set for a <group> entry instead of <user> */
    char *docroot; /* absolute directory */
} fb_docroot;

typedef struct fb_config {
    char *file; /* path it was read from */

    /* <http_server> */
    int http_port;    /* default 8080 */
    int https_port;   /* default 8443 */
    int enable_http;  /* default 0 */
    int enable_https; /* default 1 */
    char *cert_file;  /* may be NULL */
    char *key_file;   /* may be NULL */

    /* <udp> */
    int udp_port;       /* default 33001 */
    char *bind_address; /* default "::" (both families) */

    /* <transfer> */
    uint64_t target_rate_cap_kbps; /* 0 = no cap */
    uint64_t min_rate_cap_kbps;    /* 0 = no cap */
    unsigned allowed_policies;     /* fb_policy bits; default all */
    unsigned allowed_ciphers;      /* fb_cipher bits; default AES128|AES256 */
    int content_protection_required;
    uint32_t chunk_size;    /* default 1 MiB; power of two between 64 KiB and 64 MiB */
    uint64_t max_file_size; /* 0 = unlimited */
    unsigned file_mode;     /* mode of committed files, default 0644 */

    /* <sessions> */
    char *shm_path;        /* session table file, default /dev/shm/fallback-sessions */
    uint32_t max_sessions; /* slot count, default 256 */
    uint32_t idle_timeout; /* seconds */
    uint32_t done_linger;  /* seconds */
    uint32_t max_json_body; /* bytes */

    /* <docroots> */
    fb_docroot *docroots;
    unsigned ndocroots;
} fb_config;

/* Sets every field to its default (no docroots). */
void fb_config_defaults(fb_config *cfg);

/* Reads and validates PATH against SCHEMA (NULL: FB_DEFAULT_SCHEMA_FILE, or the FB_SCHEMA
 * environment variable if set). On error returns FB_ERR_CONFIG and writes "file:line: what"
 * into ERRBUF. *PCFG is allocated with malloc; free with fb_config_free. */
fb_err fb_config_load(fb_config **pcfg, const char *path, const char *schema, char *errbuf, size_t errlen);

void fb_config_free(fb_config *cfg);

/* Docroot for USER (exact <user> match first, then any <group> listed in GROUPS (NULL-terminated,
 * may be NULL), then the default). NULL if none applies. */
const char *fb_config_docroot(const fb_config *cfg, const char *user, const char *const *groups);

/* Writes the effective settings, one "key = value" per line, as fbctl check prints them. */
void fb_config_print(const fb_config *cfg, FILE *out);

/* Changes <http_server>/<http_port> (which = "http") or https_port in the file at PATH, keeping
 * comments and layout, then re-validates; the file is replaced atomically only if valid. */
fb_err fb_config_set_port(const char *path, const char *schema, const char *which, int port, char *errbuf,
                          size_t errlen);

#endif

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

/* The build passes FB_SYSCONFDIR and FB_PKGDATADIR (see Makefile.am), so the defaults follow
 * --prefix/--sysconfdir, as the installed conf/ files do; without them, Debian's paths. */
#ifdef FB_SYSCONFDIR
#define FB_DEFAULT_CONFIG_FILE FB_SYSCONFDIR "/fallback/fallback.xml"
#else
#define FB_DEFAULT_CONFIG_FILE "/etc/fallback/fallback.xml"
#endif
#ifdef FB_PKGDATADIR
#define FB_DEFAULT_SCHEMA_FILE FB_PKGDATADIR "/fallback.xsd"
#else
#define FB_DEFAULT_SCHEMA_FILE "/usr/share/fallback/fallback.xsd"
#endif
#define FB_DEFAULT_HTTP_PORT 8080
#define FB_DEFAULT_HTTPS_PORT 8443
#define FB_DEFAULT_UDP_PORT 33001
#define FB_DEFAULT_CHUNK_SIZE (1024u * 1024u)
#define FB_DEFAULT_MAX_SESSIONS 256
#define FB_DEFAULT_MAX_SESSIONS_PER_USER 32
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
    long line;     /* line of its element in the file (for messages) */
} fb_docroot;

typedef struct fb_config {
    char *file;  /* path it was read from */
    int version; /* <CONF version="N">: 1, or 2 as aspera.conf writes it (the same layout) */

    /* <http_server>. TLS itself (certificate, key) is Apache's: mod_ssl's SSLCertificateFile in
     * the virtual host of https_port; a cert_file or key_file element is refused. */
    int http_port;    /* default 8080 */
    int https_port;   /* default 8443 */
    int enable_http;  /* default 0 */
    int enable_https; /* default 1 */

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
    char *shm_path;         /* session table file, default /dev/shm/fallback-sessions */
    uint32_t max_sessions;  /* slot count, default 256 */
    uint32_t max_sessions_per_user; /* live sessions one user may hold; default 32, 0 = no limit */
    uint32_t idle_timeout;  /* seconds */
    uint32_t done_linger;   /* seconds */
    uint32_t max_json_body; /* bytes */

    /* <docroots> */
    fb_docroot *docroots;
    unsigned ndocroots;
} fb_config;

/* Largest configuration file fb_config_load reads, in bytes. */
#define FB_CONFIG_MAX_FILE_SIZE (1024 * 1024)

/* Sets every field to its default (no docroots). The string fields (bind_address, shm_path) then
 * point at static storage: a struct filled only by this function must not go to fb_config_free. */
void fb_config_defaults(fb_config *cfg);

/* Reads PATH, validates it against the schema, then checks what the schema cannot express
 * (repeated <default>/<user>/<group>, '..' in a docroot, min rate above target rate, both
 * listeners disabled, one port for HTTP and HTTPS, a non-numeric bind address). Elements an
 * aspera.conf <http_server> block may carry but this system cannot apply (cert_file, key_file:
 * TLS is mod_ssl's) are refused with a message saying where the setting belongs.
 *
 * SCHEMA NULL means: the FB_SCHEMA environment variable if set, else FB_PKGDATADIR/fallback.xsd
 * (the installed copy) if it exists, else fallback.xsd in the directory of PATH.
 *
 * On error returns FB_ERR_CONFIG and writes into ERRBUF "file:line: what" (or "file: what"
 * when no line applies, e.g. a missing file); when there are several errors, each is on its own
 * line (at most 8, then a count), the first one first. Never prints anything, never calls
 * xmlCleanupParser, and only changes libxml2's thread-local error handlers for the duration of
 * the call, so it is safe inside Apache next to other libxml2 users and from several threads.
 * *PCFG is allocated with malloc; free with fb_config_free. Docroots come back without trailing
 * slashes. */
fb_err fb_config_load(fb_config **pcfg, const char *path, const char *schema, char *errbuf, size_t errlen);

void fb_config_free(fb_config *cfg);

/* Docroot for USER: the <user> entry with that exact name first; else the first <group> entry,
 * in file order, whose name is in GROUPS (NULL-terminated, may be NULL); else the <default>.
 * NULL if none applies (the user must then be refused). USER may be NULL (default only). */
const char *fb_config_docroot(const fb_config *cfg, const char *user, const char *const *groups);

/* Name of one policy bit ("fixed", "high", "fair", "low") or cipher bit ("none", "aes-128-gcm",
 * "aes-256-gcm"); "unknown" for anything else (0, several bits, out of range). */
const char *fb_config_policy_name(unsigned policy);
const char *fb_config_cipher_name(unsigned cipher);

/* Docroot for USER as the module resolves it for an authenticated user: the <user> entry;
 * else, when the file has <group> entries, the first one naming a group USER belongs to in the
 * system's group database (NSS: getpwnam_r, getgrouplist with the primary group, getgrgid_r;
 * so /etc/group, LDAP or sssd alike); else the <default>. A USER unknown to the system can only
 * get a <user> entry or the default. NULL if nothing applies. Thread-safe. */
const char *fb_config_docroot_for_user(const fb_config *cfg, const char *user);

/* Writes the effective settings, one "key = value" per line, as fbctl check prints them. */
void fb_config_print(const fb_config *cfg, FILE *out);

/* Changes <http_server>/<http_port> (which = "http") or https_port in the file at PATH, keeping
 * comments and layout (creating the elements if absent), then re-validates; the file is replaced
 * atomically (PATH.tmp, fsync, rename; same mode and, as root, same owner) only if the result
 * loads with fb_config_load. Otherwise the original is untouched, PATH.tmp removed, and the
 * error returned (FB_ERR_CONFIG; FB_ERR_USAGE for a WHICH other than "http"/"https"; FB_ERR_IO
 * when writing fails). A symlink at PATH is followed and its target replaced. */
fb_err fb_config_set_port(const char *path, const char *schema, const char *which, int port, char *errbuf,
                          size_t errlen);

#endif

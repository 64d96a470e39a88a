/* check_config: fb_config - loading fallback.xml with its schema, defaults, every kind of error
 * with its line number, docroot lookup, and the atomic port change used by fbctl set-port. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fb_config.h"

#ifndef FB_TOP_SRCDIR
#define FB_TOP_SRCDIR "."
#endif

static char tmpdir[PATH_MAX];
static char conf_path[PATH_MAX + 16];
static char errbuf[4096];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/check_config.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(conf_path, sizeof(conf_path), "%s/fallback.xml", tmpdir);
    errbuf[0] = '\0';
}

static void teardown(void)
{
    static const char *const names[] = {"fallback.xml", "fallback.xml.tmp", "fallback.xsd", "link.xml"};
    char p[PATH_MAX + 32];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    /* A test may have unset it; matters when CK_FORK=no runs every test in one process. */
    setenv("FB_SCHEMA", FB_TOP_SRCDIR "/conf/fallback.xsd", 1);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strdup(buf);
}

/* Loads TEXT as the config file; the schema comes from FB_SCHEMA. */
static fb_err load_text(fb_config **pcfg, const char *text)
{
    write_file(conf_path, text);
    return fb_config_load(pcfg, conf_path, NULL, errbuf, sizeof(errbuf));
}

/* Asserts that loading TEXT fails, on line LINE of the file, with a message containing WHAT. */
static void expect_error(const char *text, int line, const char *what)
{
    fb_config *cfg = NULL;
    fb_err rv = load_text(&cfg, text);
    ck_assert_int_eq(rv, FB_ERR_CONFIG);
    ck_assert_ptr_null(cfg);
    char prefix[PATH_MAX + 64];
    snprintf(prefix, sizeof(prefix), "%s:%d: ", conf_path, line);
    ck_assert_msg(strncmp(errbuf, prefix, strlen(prefix)) == 0, "expected '%s...', got '%s'", prefix, errbuf);
    ck_assert_msg(strstr(errbuf, what) != NULL, "expected '%s' in '%s'", what, errbuf);
}

#define HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CONF version=\"1\">\n" /* lines 1-2 */

START_TEST(test_defaults_when_elements_absent)
{
    fb_config *cfg = NULL;
    ck_assert_int_eq(load_text(&cfg, "<CONF version=\"1\"/>\n"), FB_OK);
    ck_assert_str_eq(errbuf, "");
    ck_assert_str_eq(cfg->file, conf_path);
    ck_assert_int_eq(cfg->http_port, 8080);
    ck_assert_int_eq(cfg->https_port, 8443);
    ck_assert_int_eq(cfg->enable_http, 0);
    ck_assert_int_eq(cfg->enable_https, 1);
    ck_assert_int_eq(cfg->version, 1);
    ck_assert_int_eq(cfg->udp_port, 33001);
    ck_assert_str_eq(cfg->bind_address, "::");
    ck_assert_uint_eq(cfg->target_rate_cap_kbps, 0);
    ck_assert_uint_eq(cfg->min_rate_cap_kbps, 0);
    ck_assert_uint_eq(cfg->allowed_policies,
                      FB_POLICY_FIXED | FB_POLICY_HIGH | FB_POLICY_FAIR | FB_POLICY_LOW);
    ck_assert_uint_eq(cfg->allowed_ciphers, FB_CIPHER_AES128_GCM | FB_CIPHER_AES256_GCM);
    ck_assert_int_eq(cfg->content_protection_required, 0);
    ck_assert_uint_eq(cfg->chunk_size, 1048576);
    ck_assert_uint_eq(cfg->max_file_size, 0);
    ck_assert_uint_eq(cfg->file_mode, 0644);
    ck_assert_str_eq(cfg->shm_path, "/dev/shm/fallback-sessions");
    ck_assert_uint_eq(cfg->max_sessions, 256);
    ck_assert_uint_eq(cfg->idle_timeout, 86400);
    ck_assert_uint_eq(cfg->done_linger, 300);
    ck_assert_uint_eq(cfg->max_json_body, 65536);
    ck_assert_uint_eq(cfg->ndocroots, 0);
    ck_assert_ptr_null(fb_config_docroot(cfg, "alice", NULL));
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_defaults_function_matches_empty_file)
{
    fb_config d;
    fb_config *cfg = NULL;
    fb_config_defaults(&d);
    ck_assert_int_eq(load_text(&cfg, "<CONF version=\"1\"/>\n"), FB_OK);
    ck_assert_int_eq(d.http_port, cfg->http_port);
    ck_assert_int_eq(d.https_port, cfg->https_port);
    ck_assert_int_eq(d.udp_port, cfg->udp_port);
    ck_assert_str_eq(d.bind_address, cfg->bind_address);
    ck_assert_str_eq(d.shm_path, cfg->shm_path);
    ck_assert_uint_eq(d.chunk_size, cfg->chunk_size);
    ck_assert_uint_eq(d.allowed_ciphers, cfg->allowed_ciphers);
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_shipped_config_loads)
{
    fb_config *cfg = NULL;
    fb_err rv = fb_config_load(&cfg, FB_TOP_SRCDIR "/conf/fallback.xml", NULL, errbuf, sizeof(errbuf));
    ck_assert_msg(rv == FB_OK, "shipped config: %s", errbuf);
    ck_assert_int_eq(cfg->http_port, 8080);
    ck_assert_int_eq(cfg->https_port, 8443);
    ck_assert_int_eq(cfg->enable_http, 0);
    ck_assert_int_eq(cfg->enable_https, 1);
    ck_assert_int_eq(cfg->udp_port, 33001);
    ck_assert_uint_eq(cfg->chunk_size, 1048576);
    ck_assert_str_eq(fb_config_docroot(cfg, "anyone", NULL), "/srv/fallback");
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_all_values_read)
{
    fb_config *cfg = NULL;
    fb_err rv = load_text(&cfg, HEAD
                          "  <http_server>\n"
                          "    <http_port> 81 </http_port><https_port>444</https_port>\n"
                          "    <enable_http>yes</enable_http><enable_https>no</enable_https>\n"
                          "  </http_server>\n"
                          "  <udp><port>40000</port><bind_address>127.0.0.1</bind_address></udp>\n"
                          "  <transfer>\n"
                          "    <target_rate_cap_kbps>100000</target_rate_cap_kbps>\n"
                          "    <min_rate_cap_kbps>1000</min_rate_cap_kbps>\n"
                          "    <allowed_policies>fair, low</allowed_policies>\n"
                          "    <allowed_ciphers>none,aes-256-gcm</allowed_ciphers>\n"
                          "    <content_protection_required>1</content_protection_required>\n"
                          "    <chunk_size>65536</chunk_size><max_file_size>1099511627776</max_file_size>\n"
                          "    <file_mode>750</file_mode>\n"
                          "  </transfer>\n"
                          "  <sessions><shm_path>/run/fb/t</shm_path><max_sessions>65536</max_sessions>\n"
                          "    <idle_timeout>60</idle_timeout><done_linger>0</done_linger>\n"
                          "    <max_json_body>1024</max_json_body></sessions>\n"
                          "</CONF>\n");
    ck_assert_msg(rv == FB_OK, "%s", errbuf);
    ck_assert_int_eq(cfg->http_port, 81);
    ck_assert_int_eq(cfg->https_port, 444);
    ck_assert_int_eq(cfg->enable_http, 1);
    ck_assert_int_eq(cfg->enable_https, 0);
    ck_assert_int_eq(cfg->udp_port, 40000);
    ck_assert_str_eq(cfg->bind_address, "127.0.0.1");
    ck_assert_uint_eq(cfg->target_rate_cap_kbps, 100000);
    ck_assert_uint_eq(cfg->min_rate_cap_kbps, 1000);
    ck_assert_uint_eq(cfg->allowed_policies, FB_POLICY_FAIR | FB_POLICY_LOW);
    ck_assert_uint_eq(cfg->allowed_ciphers, FB_CIPHER_NONE | FB_CIPHER_AES256_GCM);
    ck_assert_int_eq(cfg->content_protection_required, 1);
    ck_assert_uint_eq(cfg->chunk_size, 65536);
    ck_assert_uint_eq(cfg->max_file_size, 1099511627776ull);
    ck_assert_uint_eq(cfg->file_mode, 0750);
    ck_assert_str_eq(cfg->shm_path, "/run/fb/t");
    ck_assert_uint_eq(cfg->max_sessions, 65536);
    ck_assert_uint_eq(cfg->idle_timeout, 60);
    ck_assert_uint_eq(cfg->done_linger, 0);
    ck_assert_uint_eq(cfg->max_json_body, 1024);
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_port_zero_rejected_with_line)
{
    expect_error(HEAD "  <http_server>\n    <http_port>0</http_port>\n  </http_server>\n</CONF>\n", 4,
                 "Element 'http_port'");
    ck_assert_ptr_nonnull(strstr(errbuf, "minInclusive"));
}
END_TEST

START_TEST(test_port_70000_rejected_with_line)
{
    expect_error(HEAD "  <udp>\n\n    <port>70000</port>\n  </udp>\n</CONF>\n", 5, "Element 'port'");
    ck_assert_ptr_nonnull(strstr(errbuf, "'70000' is greater than"));
}
END_TEST

START_TEST(test_non_numeric_port_rejected_with_line)
{
    expect_error(HEAD "  <http_server>\n    <https_port>https</https_port>\n  </http_server>\n</CONF>\n", 4,
                 "'https' is not a valid value");
}
END_TEST

START_TEST(test_unknown_element_rejected_with_line)
{
    expect_error(HEAD "  <udp>\n    <port>33001</port>\n  </udp>\n  <colour>blue</colour>\n</CONF>\n", 6,
                 "Element 'colour': This element is not expected");
}
END_TEST

START_TEST(test_unknown_element_inside_section_rejected_with_line)
{
    expect_error(HEAD "  <transfer>\n    <chunksize>65536</chunksize>\n  </transfer>\n</CONF>\n", 4,
                 "Element 'chunksize'");
}
END_TEST

START_TEST(test_bad_boolean_rejected_with_line)
{
    expect_error(HEAD "  <http_server>\n    <enable_http>maybe</enable_http>\n  </http_server>\n</CONF>\n", 4,
                 "Element 'enable_http'");
}
END_TEST

START_TEST(test_boolean_spellings_accepted)
{
    static const char *const yes[] = {"true", "1", "yes", " yes "};
    static const char *const no[] = {"false", "0", "no"};
    char text[512];
    fb_config *cfg = NULL;
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        snprintf(text, sizeof(text),
                 HEAD "<transfer><content_protection_required>%s</content_protection_required>"
                      "</transfer></CONF>",
                 yes[i]);
        ck_assert_msg(load_text(&cfg, text) == FB_OK, "%s: %s", yes[i], errbuf);
        ck_assert_int_eq(cfg->content_protection_required, 1);
        fb_config_free(cfg);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        snprintf(text, sizeof(text),
                 HEAD "<http_server><enable_http>true</enable_http><enable_https>%s</enable_https>"
                      "</http_server></CONF>",
                 no[i]);
        ck_assert_msg(load_text(&cfg, text) == FB_OK, "%s: %s", no[i], errbuf);
        ck_assert_int_eq(cfg->enable_https, 0);
        fb_config_free(cfg);
    }
}
END_TEST

START_TEST(test_chunk_size_not_power_of_two_rejected_with_line)
{
    expect_error(HEAD "  <transfer>\n    <chunk_size>1000000</chunk_size>\n  </transfer>\n</CONF>\n", 4,
                 "Element 'chunk_size'");
    expect_error(HEAD "  <transfer>\n    <chunk_size>32768</chunk_size>\n  </transfer>\n</CONF>\n", 4,
                 "Element 'chunk_size'");
    expect_error(HEAD "  <transfer>\n    <chunk_size>134217728</chunk_size>\n  </transfer>\n</CONF>\n", 4,
                 "Element 'chunk_size'");
}
END_TEST

START_TEST(test_relative_docroot_rejected_with_line)
{
    expect_error(HEAD "  <docroots>\n    <default>/srv/f</default>\n    <user name=\"bob\">srv/bob</user>\n"
                      "  </docroots>\n</CONF>\n",
                 5, "Element 'user'");
}
END_TEST

START_TEST(test_dotdot_docroot_rejected_with_line)
{
    expect_error(HEAD "  <docroots>\n    <default>/srv/../etc</default>\n  </docroots>\n</CONF>\n", 4,
                 "'..'");
}
END_TEST

START_TEST(test_duplicate_user_rejected_with_line)
{
    expect_error(HEAD "  <docroots>\n"
                      "    <user name=\"alice\">/srv/a</user>\n"
                      "    <user name=\"bob\">/srv/b</user>\n"
                      "    <user name=\"alice\">/srv/a2</user>\n"
                      "  </docroots>\n</CONF>\n",
                 6, "duplicate user name 'alice' (first at line 4)");
}
END_TEST

START_TEST(test_user_and_group_may_share_a_name)
{
    fb_config *cfg = NULL;
    ck_assert_msg(load_text(&cfg, HEAD "<docroots><user name=\"x\">/a</user><group name=\"x\">/b</group>"
                                       "</docroots></CONF>") == FB_OK,
                  "%s", errbuf);
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_duplicate_group_and_default_rejected_with_line)
{
    expect_error(HEAD "  <docroots>\n    <group name=\"g\">/a</group>\n    <group name=\"g\">/b</group>\n"
                      "  </docroots>\n</CONF>\n",
                 5, "duplicate group name 'g'");
    expect_error(HEAD "  <docroots>\n    <default>/a</default>\n    <default>/b</default>\n"
                      "  </docroots>\n</CONF>\n",
                 5, "second <default>");
}
END_TEST

START_TEST(test_malformed_xml_reports_line)
{
    expect_error(HEAD "  <udp>\n    <port>33001</port>\n\n</CONF>\n", 6, "mismatch");
}
END_TEST

START_TEST(test_unclosed_tag_at_end_reports_line)
{
    /* The parser notices at the end of the file (line 6, after the last newline). */
    expect_error(HEAD "  <udp>\n    <port>33001</port>\n  </udp>\n", 6,
                 "Premature end of data in tag CONF line 2");
}
END_TEST

START_TEST(test_missing_file_reported)
{
    fb_config *cfg = (fb_config *)1;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/absent.xml", tmpdir);
    ck_assert_int_eq(fb_config_load(&cfg, path, NULL, errbuf, sizeof(errbuf)), FB_ERR_CONFIG);
    ck_assert_ptr_null(cfg);
    ck_assert_ptr_nonnull(strstr(errbuf, path));
    ck_assert_ptr_nonnull(strstr(errbuf, "No such file or directory"));
}
END_TEST

START_TEST(test_wrong_root_or_version_rejected)
{
    expect_error("<config version=\"1\"/>\n", 1, "config");
    expect_error("\n<CONF version=\"3\"/>\n", 2, "version");
    expect_error("<CONF/>\n", 1, "version");
}
END_TEST

/* The block of the seed text (docs: "Configuring HTTP and HTTPS Fallback"), pasted as it is. */
START_TEST(test_aspera_conf_version_2_block_loads)
{
    fb_config *cfg = NULL;
    fb_err rv = load_text(&cfg, "<?xml version='1.0' encoding='UTF-8'?>\n"
                                "<CONF version=\"2\">\n"
                                "    <http_server>\n"
                                "        <http_port>8080</http_port>\n"
                                "        <enable_http>1</enable_http>\n"
                                "        <https_port>8443</https_port>\n"
                                "        <enable_https>1</enable_https>\n"
                                "    </http_server>\n"
                                "</CONF>\n");
    ck_assert_msg(rv == FB_OK, "%s", errbuf);
    ck_assert_int_eq(cfg->version, 2);
    ck_assert_int_eq(cfg->http_port, 8080);
    ck_assert_int_eq(cfg->https_port, 8443);
    ck_assert_int_eq(cfg->enable_http, 1);
    ck_assert_int_eq(cfg->enable_https, 1);
    fb_config_free(cfg);
    /* The seed's second block: one number for both ports cannot apply. */
    expect_error("<?xml version='1.0' encoding='UTF-8'?>\n<CONF version=\"2\">\n<http_server>\n"
                 "    <http_port>1234</http_port>\n    <https_port>1234</https_port>\n"
                 "    <enable_http>true</enable_http>\n    <enable_https>true</enable_https>\n"
                 "</http_server>\n</CONF>\n",
                 5, "http_port and https_port are both 1234: one port cannot serve plain HTTP and HTTPS");
}
END_TEST

/* cert_file/key_file from aspera.conf: refused, pointing at mod_ssl, each with its line. */
START_TEST(test_cert_and_key_file_refused_pointing_at_mod_ssl)
{
    expect_error(HEAD "  <http_server>\n    <cert_file>/c.pem</cert_file>\n  </http_server>\n</CONF>\n", 4,
                 "Element 'cert_file': not supported here: TLS for the fallback is Apache's: set "
                 "SSLCertificateFile");
    expect_error(HEAD "  <http_server>\n\n    <key_file>/k.pem</key_file>\n  </http_server>\n</CONF>\n", 5,
                 "SSLCertificateKeyFile");
    char second[PATH_MAX + 64];
    fb_config *cfg = NULL;
    ck_assert_int_eq(load_text(&cfg, HEAD "  <http_server>\n    <cert_file>/c.pem</cert_file>\n"
                                          "    <key_file>/k.pem</key_file>\n  </http_server>\n</CONF>\n"),
                     FB_ERR_CONFIG);
    snprintf(second, sizeof(second), "\n%s:5: Element 'key_file'", conf_path);
    ck_assert_msg(strstr(errbuf, second) != NULL, "expected '%s' in '%s'", second, errbuf);
}
END_TEST

START_TEST(test_policy_and_cipher_names)
{
    ck_assert_str_eq(fb_config_policy_name(FB_POLICY_FIXED), "fixed");
    ck_assert_str_eq(fb_config_policy_name(FB_POLICY_LOW), "low");
    ck_assert_str_eq(fb_config_policy_name(0), "unknown");
    ck_assert_str_eq(fb_config_policy_name(FB_POLICY_FAIR | FB_POLICY_LOW), "unknown");
    ck_assert_str_eq(fb_config_cipher_name(FB_CIPHER_AES128_GCM), "aes-128-gcm");
    ck_assert_str_eq(fb_config_cipher_name(FB_CIPHER_AES256_GCM), "aes-256-gcm");
    ck_assert_str_eq(fb_config_cipher_name(FB_CIPHER_NONE), "none");
    ck_assert_str_eq(fb_config_cipher_name(64), "unknown");
}
END_TEST

/* Groups come from the system (NSS): the current user's primary group picks its <group> entry;
 * a user the system does not know gets the default; a <user> entry wins over any group. */
START_TEST(test_docroot_for_user_resolves_system_groups)
{
    struct passwd *pw = getpwuid(geteuid());
    ck_assert_ptr_nonnull(pw);
    char user[256];
    snprintf(user, sizeof(user), "%s", pw->pw_name);
    struct group *gr = getgrgid(pw->pw_gid);
    ck_assert_ptr_nonnull(gr);
    char text[2048];
    snprintf(text, sizeof(text),
             HEAD "<docroots>\n  <group name=\"no-such-group-fbtest\">/srv/none</group>\n"
                  "  <group name=\"%s\">/srv/mine</group>\n  <default>/srv/all</default>\n</docroots></CONF>\n",
             gr->gr_name);
    fb_config *cfg = NULL;
    ck_assert_msg(load_text(&cfg, text) == FB_OK, "%s", errbuf);
    ck_assert_str_eq(fb_config_docroot_for_user(cfg, user), "/srv/mine");
    ck_assert_str_eq(fb_config_docroot_for_user(cfg, "no-such-user-fbtest"), "/srv/all");
    ck_assert_str_eq(fb_config_docroot_for_user(cfg, ""), "/srv/all");
    fb_config_free(cfg);
    snprintf(text, sizeof(text),
             HEAD "<docroots>\n  <group name=\"%s\">/srv/mine</group>\n  <user name=\"%s\">/srv/me</user>\n"
                  "</docroots></CONF>\n",
             gr->gr_name, user);
    ck_assert_msg(load_text(&cfg, text) == FB_OK, "%s", errbuf);
    ck_assert_str_eq(fb_config_docroot_for_user(cfg, user), "/srv/me");
    ck_assert_ptr_null(fb_config_docroot_for_user(cfg, "no-such-user-fbtest"));
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_doctype_rejected)
{
    fb_config *cfg = NULL;
    ck_assert_int_eq(load_text(&cfg, "<!DOCTYPE CONF [ <!ENTITY x \"8080\"> ]>\n"
                                     "<CONF version=\"1\"><http_server><http_port>&x;</http_port>"
                                     "</http_server></CONF>\n"),
                     FB_ERR_CONFIG);
    ck_assert_ptr_null(cfg);
    ck_assert_ptr_nonnull(strstr(errbuf, conf_path));
}
END_TEST

START_TEST(test_semantic_rules_reported_with_line)
{
    expect_error(HEAD "  <transfer>\n    <target_rate_cap_kbps>100</target_rate_cap_kbps>\n"
                      "    <min_rate_cap_kbps>200</min_rate_cap_kbps>\n  </transfer>\n</CONF>\n",
                 5, "min_rate_cap_kbps (200) is above");
    expect_error(HEAD
                 "  <http_server>\n    <enable_http>no</enable_http>\n    <enable_https>no</enable_https>\n"
                 "  </http_server>\n</CONF>\n",
                 5, "both false");
    expect_error(HEAD "  <http_server>\n    <enable_http>1</enable_http>\n    <https_port>8080</https_port>\n"
                      "  </http_server>\n</CONF>\n",
                 5, "both 8080");
    expect_error(HEAD "  <udp>\n    <bind_address>1.2.3.4.5</bind_address>\n  </udp>\n</CONF>\n", 4,
                 "not a numeric IPv4 or IPv6 address");
}
END_TEST

START_TEST(test_several_errors_each_on_a_line)
{
    expect_error(HEAD "  <http_server>\n    <http_port>0</http_port>\n    <https_port>0</https_port>\n"
                      "  </http_server>\n</CONF>\n",
                 4, "http_port");
    char second[PATH_MAX + 64];
    snprintf(second, sizeof(second), "\n%s:5: ", conf_path);
    ck_assert_msg(strstr(errbuf, second) != NULL, "no second error line in '%s'", errbuf);
}
END_TEST

START_TEST(test_small_errbuf_truncates_safely)
{
    fb_config *cfg = NULL;
    char small[16];
    memset(small, 'x', sizeof(small));
    write_file(conf_path, HEAD "<udp><port>0</port></udp></CONF>");
    ck_assert_int_eq(fb_config_load(&cfg, conf_path, NULL, small, sizeof(small)), FB_ERR_CONFIG);
    ck_assert_uint_eq(strlen(small), sizeof(small) - 1);
    ck_assert_int_eq(fb_config_load(&cfg, conf_path, NULL, NULL, 0), FB_ERR_CONFIG);
}
END_TEST

START_TEST(test_explicit_missing_schema_reported)
{
    fb_config *cfg = NULL;
    write_file(conf_path, "<CONF version=\"1\"/>");
    ck_assert_int_eq(fb_config_load(&cfg, conf_path, "/nonexistent/fallback.xsd", errbuf, sizeof(errbuf)),
                     FB_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(errbuf, "/nonexistent/fallback.xsd"));
}
END_TEST

START_TEST(test_schema_found_beside_config_or_clear_error)
{
    fb_config *cfg = NULL;
    char xsd[PATH_MAX + 32];
    unsetenv("FB_SCHEMA");
    write_file(conf_path, "<CONF version=\"1\"/>");
    int installed = access(FB_PKGDATADIR "/fallback.xsd", R_OK) == 0;
    if (!installed) {
        ck_assert_int_eq(fb_config_load(&cfg, conf_path, NULL, errbuf, sizeof(errbuf)), FB_ERR_CONFIG);
        ck_assert_ptr_nonnull(strstr(errbuf, "no schema"));
        ck_assert_ptr_nonnull(strstr(errbuf, "FB_SCHEMA"));
    }
    char *text = read_file(FB_TOP_SRCDIR "/conf/fallback.xsd");
    snprintf(xsd, sizeof(xsd), "%s/fallback.xsd", tmpdir);
    write_file(xsd, text);
    free(text);
    ck_assert_msg(fb_config_load(&cfg, conf_path, NULL, errbuf, sizeof(errbuf)) == FB_OK, "%s", errbuf);
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_docroot_lookup_user_group_default)
{
    fb_config *cfg = NULL;
    ck_assert_msg(load_text(&cfg, HEAD "<docroots>\n"
                                       "  <group name=\"staff\">/srv/staff/</group>\n"
                                       "  <user name=\"alice\">/srv/alice</user>\n"
                                       "  <group name=\"video\">/srv/video</group>\n"
                                       "  <default>/srv/all</default>\n"
                                       "</docroots></CONF>\n") == FB_OK,
                  "%s", errbuf);
    const char *const alice_groups[] = {"staff", NULL};
    const char *const bob_groups[] = {"video", "staff", NULL};
    const char *const carol_groups[] = {"other", NULL};
    ck_assert_uint_eq(cfg->ndocroots, 4);
    ck_assert_str_eq(fb_config_docroot(cfg, "alice", alice_groups), "/srv/alice");
    /* First matching group in file order, trailing slash dropped. */
    ck_assert_str_eq(fb_config_docroot(cfg, "bob", bob_groups), "/srv/staff");
    ck_assert_str_eq(fb_config_docroot(cfg, "carol", carol_groups), "/srv/all");
    ck_assert_str_eq(fb_config_docroot(cfg, "carol", NULL), "/srv/all");
    ck_assert_str_eq(fb_config_docroot(cfg, NULL, NULL), "/srv/all");
    /* A group entry does not match a user of that name. */
    ck_assert_str_eq(fb_config_docroot(cfg, "video", NULL), "/srv/all");
    fb_config_free(cfg);

    ck_assert(load_text(&cfg, HEAD "<docroots><user name=\"alice\">/srv/alice</user></docroots></CONF>") ==
              FB_OK);
    ck_assert_ptr_null(fb_config_docroot(cfg, "bob", bob_groups));
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_print_shows_effective_settings)
{
    fb_config *cfg = NULL;
    ck_assert(load_text(&cfg,
                        HEAD "<udp><port>40001</port></udp><docroots><user name=\"a\">/x</user></docroots>"
                             "</CONF>") == FB_OK);
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(out);
    fb_config_print(cfg, out);
    fclose(out);
    ck_assert_ptr_nonnull(strstr(buf, "udp.port = 40001\n"));
    ck_assert_ptr_nonnull(strstr(buf, "http_server.https_port = 8443\n"));
    ck_assert_ptr_nonnull(strstr(buf, "transfer.allowed_ciphers = aes-128-gcm,aes-256-gcm\n"));
    ck_assert_ptr_nonnull(strstr(buf, "transfer.file_mode = 0644\n"));
    ck_assert_ptr_nonnull(strstr(buf, "docroots.user.a = /x\n"));
    free(buf);
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_set_port_round_trip_keeps_comments)
{
    char *text = read_file(FB_TOP_SRCDIR "/conf/fallback.xml");
    write_file(conf_path, text);
    free(text);
    ck_assert_int_eq(chmod(conf_path, 0640), 0);

    fb_err rv = fb_config_set_port(conf_path, NULL, "https", 9443, errbuf, sizeof(errbuf));
    ck_assert_msg(rv == FB_OK, "%s", errbuf);

    fb_config *cfg = NULL;
    ck_assert_msg(fb_config_load(&cfg, conf_path, NULL, errbuf, sizeof(errbuf)) == FB_OK, "%s", errbuf);
    ck_assert_int_eq(cfg->https_port, 9443);
    ck_assert_int_eq(cfg->http_port, 8080);
    ck_assert_str_eq(fb_config_docroot(cfg, "x", NULL), "/srv/fallback");
    fb_config_free(cfg);

    text = read_file(conf_path);
    ck_assert_ptr_nonnull(strstr(text, "Change it with: fbctl set-port https PORT"));
    ck_assert_ptr_nonnull(strstr(text, "<https_port>9443</https_port>"));
    ck_assert_ptr_nonnull(strstr(text, "\n    <https_port>9443</https_port>\n")); /* indentation kept */
    free(text);

    struct stat st;
    ck_assert_int_eq(stat(conf_path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0640);
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof(tmp), "%s.tmp", conf_path);
    ck_assert_int_eq(access(tmp, F_OK), -1);
}
END_TEST

START_TEST(test_set_port_creates_missing_elements)
{
    write_file(conf_path, "<CONF version=\"1\">\n  <!-- keep me -->\n</CONF>\n");
    ck_assert_msg(fb_config_set_port(conf_path, NULL, "http", 8081, errbuf, sizeof(errbuf)) == FB_OK, "%s",
                  errbuf);
    fb_config *cfg = NULL;
    ck_assert_msg(fb_config_load(&cfg, conf_path, NULL, errbuf, sizeof(errbuf)) == FB_OK, "%s", errbuf);
    ck_assert_int_eq(cfg->http_port, 8081);
    fb_config_free(cfg);
    char *text = read_file(conf_path);
    ck_assert_ptr_nonnull(strstr(text, "<!-- keep me -->"));
    ck_assert_ptr_nonnull(
        strstr(text, "  <http_server>\n    <http_port>8081</http_port>\n  </http_server>\n"));
    free(text);

    /* The second port goes into the existing section. */
    ck_assert_msg(fb_config_set_port(conf_path, NULL, "https", 9000, errbuf, sizeof(errbuf)) == FB_OK, "%s",
                  errbuf);
    ck_assert(fb_config_load(&cfg, conf_path, NULL, errbuf, sizeof(errbuf)) == FB_OK);
    ck_assert_int_eq(cfg->http_port, 8081);
    ck_assert_int_eq(cfg->https_port, 9000);
    fb_config_free(cfg);
}
END_TEST

START_TEST(test_set_port_invalid_leaves_file_unchanged)
{
    const char *orig = HEAD "  <!-- a comment -->\n  <http_server>\n    <https_port>8443</https_port>\n"
                            "  </http_server>\n</CONF>\n";
    write_file(conf_path, orig);
    fb_err rv = fb_config_set_port(conf_path, NULL, "https", 70000, errbuf, sizeof(errbuf));
    ck_assert_int_eq(rv, FB_ERR_CONFIG);
    char prefix[PATH_MAX + 32];
    snprintf(prefix, sizeof(prefix), "%s:5: ", conf_path);
    ck_assert_msg(strncmp(errbuf, prefix, strlen(prefix)) == 0, "got '%s'", errbuf);
    ck_assert_ptr_nonnull(strstr(errbuf, "70000"));

    rv = fb_config_set_port(conf_path, NULL, "https", 0, errbuf, sizeof(errbuf));
    ck_assert_int_eq(rv, FB_ERR_CONFIG);
    /* Same port for HTTP and HTTPS with both enabled is a semantic error: also refused. */
    write_file(conf_path, HEAD "<http_server><enable_http>true</enable_http></http_server></CONF>\n");
    ck_assert_int_eq(fb_config_set_port(conf_path, NULL, "http", 8443, errbuf, sizeof(errbuf)),
                     FB_ERR_CONFIG);
    char *text = read_file(conf_path);
    ck_assert_str_eq(text, HEAD "<http_server><enable_http>true</enable_http></http_server></CONF>\n");
    free(text);

    write_file(conf_path, orig);
    ck_assert_int_eq(fb_config_set_port(conf_path, NULL, "ftp", 21, errbuf, sizeof(errbuf)), FB_ERR_USAGE);
    text = read_file(conf_path);
    ck_assert_str_eq(text, orig);
    free(text);
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof(tmp), "%s.tmp", conf_path);
    ck_assert_int_eq(access(tmp, F_OK), -1);
}
END_TEST

START_TEST(test_set_port_on_invalid_file_changes_nothing)
{
    const char *orig = HEAD "  <udp><port>0</port></udp>\n</CONF>\n";
    write_file(conf_path, orig);
    ck_assert_int_eq(fb_config_set_port(conf_path, NULL, "http", 8000, errbuf, sizeof(errbuf)),
                     FB_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(errbuf, ":3: "));
    char *text = read_file(conf_path);
    ck_assert_str_eq(text, orig);
    free(text);

    char absent[PATH_MAX + 32];
    snprintf(absent, sizeof(absent), "%s/absent.xml", tmpdir);
    ck_assert_int_eq(fb_config_set_port(absent, NULL, "http", 8000, errbuf, sizeof(errbuf)), FB_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(errbuf, "No such file"));
}
END_TEST

START_TEST(test_set_port_follows_symlink)
{
    char link[PATH_MAX + 32];
    write_file(conf_path, "<CONF version=\"1\"/>\n");
    snprintf(link, sizeof(link), "%s/link.xml", tmpdir);
    ck_assert_int_eq(symlink("fallback.xml", link), 0);
    ck_assert_msg(fb_config_set_port(link, NULL, "https", 8444, errbuf, sizeof(errbuf)) == FB_OK, "%s",
                  errbuf);
    struct stat st;
    ck_assert_int_eq(lstat(link, &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    fb_config *cfg = NULL;
    ck_assert(fb_config_load(&cfg, conf_path, NULL, errbuf, sizeof(errbuf)) == FB_OK);
    ck_assert_int_eq(cfg->https_port, 8444);
    fb_config_free(cfg);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("load");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_defaults_when_elements_absent);
    tcase_add_test(tc, test_defaults_function_matches_empty_file);
    tcase_add_test(tc, test_shipped_config_loads);
    tcase_add_test(tc, test_all_values_read);
    tcase_add_test(tc, test_port_zero_rejected_with_line);
    tcase_add_test(tc, test_port_70000_rejected_with_line);
    tcase_add_test(tc, test_non_numeric_port_rejected_with_line);
    tcase_add_test(tc, test_unknown_element_rejected_with_line);
    tcase_add_test(tc, test_unknown_element_inside_section_rejected_with_line);
    tcase_add_test(tc, test_bad_boolean_rejected_with_line);
    tcase_add_test(tc, test_boolean_spellings_accepted);
    tcase_add_test(tc, test_chunk_size_not_power_of_two_rejected_with_line);
    tcase_add_test(tc, test_relative_docroot_rejected_with_line);
    tcase_add_test(tc, test_dotdot_docroot_rejected_with_line);
    tcase_add_test(tc, test_duplicate_user_rejected_with_line);
    tcase_add_test(tc, test_user_and_group_may_share_a_name);
    tcase_add_test(tc, test_duplicate_group_and_default_rejected_with_line);
    tcase_add_test(tc, test_malformed_xml_reports_line);
    tcase_add_test(tc, test_unclosed_tag_at_end_reports_line);
    tcase_add_test(tc, test_missing_file_reported);
    tcase_add_test(tc, test_wrong_root_or_version_rejected);
    tcase_add_test(tc, test_doctype_rejected);
    tcase_add_test(tc, test_aspera_conf_version_2_block_loads);
    tcase_add_test(tc, test_cert_and_key_file_refused_pointing_at_mod_ssl);
    tcase_add_test(tc, test_policy_and_cipher_names);
    tcase_add_test(tc, test_docroot_for_user_resolves_system_groups);
    tcase_add_test(tc, test_semantic_rules_reported_with_line);
    tcase_add_test(tc, test_several_errors_each_on_a_line);
    tcase_add_test(tc, test_small_errbuf_truncates_safely);
    tcase_add_test(tc, test_explicit_missing_schema_reported);
    tcase_add_test(tc, test_schema_found_beside_config_or_clear_error);
    tcase_add_test(tc, test_docroot_lookup_user_group_default);
    tcase_add_test(tc, test_print_shows_effective_settings);
    suite_add_tcase(s, tc);

    TCase *tw = tcase_create("set_port");
    tcase_add_checked_fixture(tw, setup, teardown);
    tcase_add_test(tw, test_set_port_round_trip_keeps_comments);
    tcase_add_test(tw, test_set_port_creates_missing_elements);
    tcase_add_test(tw, test_set_port_invalid_leaves_file_unchanged);
    tcase_add_test(tw, test_set_port_on_invalid_file_changes_nothing);
    tcase_add_test(tw, test_set_port_follows_symlink);
    suite_add_tcase(s, tw);
    return s;
}

int main(void)
{
    /* make check sets FB_SCHEMA to the same file; running the binary by hand needs it too. */
    setenv("FB_SCHEMA", FB_TOP_SRCDIR "/conf/fallback.xsd", 1);
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

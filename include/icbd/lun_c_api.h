/* C interface of libblockd's LUN, for the tgtd glue (tgt-backend/bs_icbd.c).
 * Contract: icbd_lun_submit() never calls back; each submitted command completes
 * exactly once, through host->complete, from icbd_lun_submit_batch() or
 * icbd_lun_process_completions(). Error returns are negative errno values with a
 * message in `err`. */
#ifndef ICBD_LUN_C_API_H
#define ICBD_LUN_C_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct icbd_lun;

struct icbd_result {
	uint8_t status;
	uint8_t sense_key;
	uint16_t asc;
	uint8_t has_info;
	uint64_t info;
};

struct icbd_cmd {
	void *cookie;
	const uint8_t *cdb;
	uint64_t offset;
	uint32_t tl;
	void *in_buf;
	uint32_t in_len;
	void *out_buf;
	uint32_t out_len;
	uint64_t lun_size;
	unsigned blk_shift;
	int write_cache_enabled;
	int thin_provisioning;
	/* MAXIMUM COMPARE AND WRITE LENGTH the LU advertises (blocks; 0: none). */
	unsigned max_compare_and_write_blocks;
};

struct icbd_lun_host {
	void (*complete)(void *ctx, void *cookie, const struct icbd_result *result);
	void (*kick)(void *ctx);
	void *ctx;
};

enum icbd_log_level { ICBD_LOG_INFO, ICBD_LOG_WARNING, ICBD_LOG_ERROR };
void icbd_set_log_sink(void (*sink)(int level, const char *msg));

/* name: the LUN in log lines ("tgt 1 lun 2"). Returns -ENOENT: unknown option;
 * -EINVAL: bad value; other: engine setup failed. */
int icbd_lun_create(const char *name, const char *bsopts, const struct icbd_lun_host *host,
		    struct icbd_lun **out, char *err, size_t errlen);
void icbd_lun_destroy(struct icbd_lun *lun);
const char *icbd_lun_engine_name(const struct icbd_lun *lun);
int icbd_lun_event_fd(const struct icbd_lun *lun);
/* A timerfd to watch for EPOLLIN as well (-1: none, the LUN has no cache);
 * call icbd_lun_timer() when it is readable (idle write-back of the cache;
 * may queue I/O and kick). */
int icbd_lun_timer_fd(const struct icbd_lun *lun);
void icbd_lun_timer(struct icbd_lun *lun);

/* Opens the backing file; on success *fd is the LUN's file (owned by the LUN). */
int icbd_lun_open(struct icbd_lun *lun, const char *path, int extra_oflags,
		  int *fd, uint64_t *size, int *readonly, char *err, size_t errlen);
void icbd_lun_close(struct icbd_lun *lun);

void icbd_lun_submit(struct icbd_lun *lun, const struct icbd_cmd *cmd);
void icbd_lun_submit_batch(struct icbd_lun *lun);
void icbd_lun_process_completions(struct icbd_lun *lun);

#ifdef __cplusplus
}
#endif
#endif

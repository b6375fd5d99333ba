/* C interface of libblockd's LUN, for the tgtd glue (tgt-backend/bs_icbd.c).
 *
 * No C++ exception ever crosses it: every function is noexcept, and an
 * exception inside one (std::bad_alloc, std::system_error from a thread, ...)
 * becomes that function's error return, as below, plus one error line naming
 * the LUN, the call and the cause. After such an internal error the LUN is
 * failed: icbd_lun_submit() refuses every new command with -EIO, while the
 * commands it took before still complete; close and destroy still work.
 *
 * Error returns are negative errno values (-ENOMEM for an allocation failure),
 * with a message in `err` where the function has one. All calls on one LUN
 * come from one thread (tgtd's event loop). */
#ifndef ICBD_LUN_C_API_H
#define ICBD_LUN_C_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define ICBD_NOEXCEPT noexcept
extern "C" {
#else
#define ICBD_NOEXCEPT
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

/* The host's sink gets every line with its level; bs_icbd passes the level on
 * to tgtd's log (docs/tgt-module.md, "Logging"). When tgtd's stderr is the
 * journal's stream, lines go to the journal with their priority and TARGET=,
 * LUN= fields instead, and the sink gets only those the journal refused.
 * An internal error keeps the previous sink. */
enum icbd_log_level { ICBD_LOG_INFO, ICBD_LOG_WARNING, ICBD_LOG_ERROR };
void icbd_set_log_sink(void (*sink)(int level, const char *msg)) ICBD_NOEXCEPT;

/* name: the LUN in log lines ("tgt 1 lun 2"). 0: *out is the new LUN.
 * Errors: -ENOENT: unknown option; -EINVAL: bad value; -ENOMEM: out of memory;
 * other: engine setup failed. On error *out is untouched and nothing is left
 * allocated. */
int icbd_lun_create(const char *name, const char *bsopts, const struct icbd_lun_host *host,
		    struct icbd_lun **out, char *err, size_t errlen) ICBD_NOEXCEPT;
/* Closes the LUN if open (waiting for its I/O, writing its cache back) and
 * frees it, also when closing hit an error or an internal error. No callback
 * runs after it returned. */
void icbd_lun_destroy(struct icbd_lun *lun) ICBD_NOEXCEPT;
const char *icbd_lun_engine_name(const struct icbd_lun *lun) ICBD_NOEXCEPT;
int icbd_lun_event_fd(const struct icbd_lun *lun) ICBD_NOEXCEPT;
/* A timerfd to watch for EPOLLIN as well (-1: none, the LUN has no cache);
 * call icbd_lun_timer() when it is readable (idle write-back of the cache;
 * may queue I/O and kick). An internal error there fails the LUN. */
int icbd_lun_timer_fd(const struct icbd_lun *lun) ICBD_NOEXCEPT;
void icbd_lun_timer(struct icbd_lun *lun) ICBD_NOEXCEPT;

/* Opens the backing file; 0: *fd is the LUN's file (owned by the LUN), *size
 * its size in bytes, *readonly set when it could only be opened read-only.
 * Error: -errno and a message in err; the outputs are untouched. */
int icbd_lun_open(struct icbd_lun *lun, const char *path, int extra_oflags,
		  int *fd, uint64_t *size, int *readonly, char *err, size_t errlen) ICBD_NOEXCEPT;
/* Waits for every command and I/O in flight (their callbacks run from here),
 * writes the cache back, closes the files. */
void icbd_lun_close(struct icbd_lun *lun) ICBD_NOEXCEPT;

/* Hands a command to the LUN; never calls back from inside.
 *  0: taken. host->complete runs exactly once for it, later, from
 *     icbd_lun_submit_batch(), icbd_lun_process_completions(), icbd_lun_timer()
 *     or icbd_lun_close().
 *  < 0 (-ENOMEM: no memory for it; -EIO: the LUN failed earlier): refused.
 *     host->complete never runs for it, I/O the LUN had started for it has
 *     ended, and the caller answers it itself (bs_icbd: tgtd's HARDWARE
 *     ERROR, INTERNAL TARGET FAILURE). */
int icbd_lun_submit(struct icbd_lun *lun, const struct icbd_cmd *cmd) ICBD_NOEXCEPT;
/* Hands the I/O queued in this loop pass to the kernel and delivers what
 * completed. An internal error fails the LUN. */
void icbd_lun_submit_batch(struct icbd_lun *lun) ICBD_NOEXCEPT;
/* Call when the event fd is readable: delivers completions. An internal error
 * fails the LUN. */
void icbd_lun_process_completions(struct icbd_lun *lun) ICBD_NOEXCEPT;

#ifdef __cplusplus
}
#endif
#endif

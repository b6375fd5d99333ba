/* bs_icbd.c: tgtd backing-store module "icbd". Thin glue between tgtd's ABI and
 * libblockd (include/icbd/lun_c_api.h); all logic lives in libblockd.
 * One io_uring per LUN; its eventfd is watched by tgtd's epoll loop, and queued
 * I/O is submitted once per loop pass from a scheduled event. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>

#include "list.h"
#include "util.h"
#include "tgtd.h"
#include "scsi.h"
#include "spc.h"
#include "target.h"

#include "icbd/lun_c_api.h"

struct bs_icbd_info {
	struct scsi_lu *lu;
	struct icbd_lun *lun;
	struct event_data submit_ev;
	int efd;
	int tfd;	/* idle write-back timer */
};

static inline struct bs_icbd_info *BS_ICBD_I(struct scsi_lu *lu)
{
	return (struct bs_icbd_info *)((char *)lu + sizeof(*lu));
}

/* libblockd's lines in tgtd's log, at their level (docs/tgt-module.md,
 * "Logging"). tgt has three: log_error (syslog LOG_ERR), log_warning
 * (LOG_WARNING) and log_debug (LOG_DEBUG), nothing at LOG_INFO. Information
 * (direct=auto's choice, the cache's write-back at close, recovery figures)
 * goes to log_debug: only tgt's dprintf() macro is gated by tgtd's debug
 * switch, log_debug() itself always writes, to stderr with tgtd -f and to
 * syslog at LOG_DEBUG when tgtd daemonizes (kept by Debian's rsyslog in
 * /var/log/syslog and by journald). log_warning would have every routine
 * line counted as a warning. Under systemd (tgt.service runs tgtd -f with
 * stderr on the journal) libblockd writes to the journal itself, at LOG_INFO,
 * and this sink only gets what the journal refused. */
static void icbd_log(int level, const char *msg)
{
	switch (level) {
	case ICBD_LOG_INFO:
		log_debug("bs_icbd: %s\n", msg);
		break;
	case ICBD_LOG_WARNING:
		log_warning("bs_icbd: %s\n", msg);
		break;
	default:
		log_error("bs_icbd: %s\n", msg);
		break;
	}
}

static void icbd_complete(void *ctx, void *cookie, const struct icbd_result *r)
{
	struct scsi_cmd *cmd = cookie;

	if (r->status != SAM_STAT_GOOD) {
		if (r->has_info)
			sense_data_build_with_info(cmd, r->sense_key, r->asc, r->info);
		else
			sense_data_build(cmd, r->sense_key, r->asc);
	}
	target_cmd_io_done(cmd, r->status);
}

/* libblockd queued I/O: submit it once, at the next pass of the event loop. */
static void icbd_kick(void *ctx)
{
	struct bs_icbd_info *info = ctx;

	tgt_add_sched_event(&info->submit_ev);
}

static void icbd_submit_handler(struct event_data *ev)
{
	struct bs_icbd_info *info = ev->data;

	icbd_lun_submit_batch(info->lun);
}

/* Level-triggered, and libblockd reads the eventfd before draining: tgtd's
 * event loop drops the rest of an epoll batch whenever a handler deletes an fd
 * (a connection closing), so an edge-triggered wake-up could be lost for good;
 * that hung iscsi-test-cu with a completion waiting in the ring. */
static void icbd_completion_handler(int fd, int events, void *data)
{
	struct bs_icbd_info *info = data;

	icbd_lun_process_completions(info->lun);
}

static void icbd_timer_handler(int fd, int events, void *data)
{
	struct bs_icbd_info *info = data;

	icbd_lun_timer(info->lun);
}

static int bs_icbd_cmd_submit(struct scsi_cmd *cmd)
{
	struct scsi_lu *lu = cmd->dev;
	struct bs_icbd_info *info = BS_ICBD_I(lu);
	struct mode_pg *caching = find_mode_page(lu, 0x08, 0);
	struct vpd *bl = lu->attrs.lu_vpd[PCODE_OFFSET(0xb0)];
	struct icbd_cmd c = {
		.cookie = cmd,
		.cdb = cmd->scb,
		.offset = cmd->offset,
		.tl = cmd->tl,
		.in_buf = scsi_get_in_buffer(cmd),
		.in_len = scsi_get_in_length(cmd),
		.out_buf = scsi_get_out_buffer(cmd),
		.out_len = scsi_get_out_length(cmd),
		.lun_size = lu->size,
		.blk_shift = lu->blk_shift,
		/* WCE=0 in the caching mode page makes every write durable. */
		.write_cache_enabled = caching ? (caching->mode_data[0] & 0x04) != 0 : 1,
		.thin_provisioning = lu->attrs.thinprovisioning,
		/* Byte 5 of the Block Limits VPD page tgtd answers for this LU. */
		.max_compare_and_write_blocks = bl ? bl->data[1] : 0,
	};

	set_cmd_async(cmd);
	if (icbd_lun_submit(info->lun, &c) < 0) {
		/* Refused (out of memory, or the LUN failed; libblockd logged why):
		 * no completion will come, tgtd answers HARDWARE ERROR now. EIO,
		 * not -1: tgt's SYNCHRONIZE CACHE turns only EROFS, EINVAL, EBADF
		 * and EIO into an error and answers GOOD to anything else, which
		 * would tell the initiator its writes are durable. */
		clear_cmd_async(cmd);
		return EIO;
	}
	return 0;
}

static int bs_icbd_open(struct scsi_lu *lu, char *path, int *fd, uint64_t *size)
{
	struct bs_icbd_info *info = BS_ICBD_I(lu);
	char err[512];
	int readonly = 0;
	struct stat st;
	int ret;

	ret = icbd_lun_open(info->lun, path, lu->bsoflags, fd, size, &readonly,
			    err, sizeof(err));
	if (ret) {
		eprintf("bs_icbd: tgt %d lun %" PRIu64 ": %s\n",
			lu->tgt->tid, lu->lun, err);
		return -1;
	}
	if (readonly)
		lu->attrs.readonly = 1;
	/* Same physical block reporting as tgt's rdwr backend. */
	if (!lu->attrs.no_auto_lbppbe && fstat(*fd, &st) == 0)
		update_lbppbe(lu, S_ISREG(st.st_mode) ? st.st_blksize : 0);
	return 0;
}

static void bs_icbd_close(struct scsi_lu *lu)
{
	icbd_lun_close(BS_ICBD_I(lu)->lun);
}

static tgtadm_err bs_icbd_init(struct scsi_lu *lu, char *bsopts)
{
	struct bs_icbd_info *info = BS_ICBD_I(lu);
	struct icbd_lun_host host = {
		.complete = icbd_complete,
		.kick = icbd_kick,
		.ctx = info,
	};
	char err[512], name[64];
	int ret;

	memset(info, 0, sizeof(*info));
	info->lu = lu;
	info->efd = info->tfd = -1;
	tgt_init_sched_event(&info->submit_ev, icbd_submit_handler, info);

	snprintf(name, sizeof(name), "tgt %d lun %" PRIu64, lu->tgt->tid, lu->lun);
	ret = icbd_lun_create(name, bsopts, &host, &info->lun, err, sizeof(err));
	if (ret) {
		eprintf("bs_icbd: tgt %d lun %" PRIu64 ": %s\n",
			lu->tgt->tid, lu->lun, err);
		if (ret == -ENOENT)
			return TGTADM_UNKNOWN_PARAM;
		if (ret == -EINVAL)
			return TGTADM_INVALID_REQUEST;
		return ret == -ENOMEM ? TGTADM_NOMEM : TGTADM_UNKNOWN_ERR;
	}

	/* tgt 1.0.85 leaves COMPARE AND WRITE out of its SBC table (the entry is
	 * commented out), so tgtd answers INVALID OPERATION CODE itself. Each LU
	 * has its own copy of the table: route the opcode through sbc_rw (which
	 * checks range, protection and read-only for it) to us, for our LUs only. */
	lu->dev_type_template.ops[COMPARE_AND_WRITE] = lu->dev_type_template.ops[WRITE_16];

	info->efd = icbd_lun_event_fd(info->lun);
	if (tgt_event_add(info->efd, EPOLLIN, icbd_completion_handler, info)) {
		eprintf("bs_icbd: tgt %d lun %" PRIu64 ": cannot watch eventfd\n",
			lu->tgt->tid, lu->lun);
		goto destroy;
	}
	info->tfd = icbd_lun_timer_fd(info->lun);
	if (info->tfd >= 0 &&
	    tgt_event_add(info->tfd, EPOLLIN, icbd_timer_handler, info)) {
		eprintf("bs_icbd: tgt %d lun %" PRIu64 ": cannot watch timerfd\n",
			lu->tgt->tid, lu->lun);
		tgt_event_del(info->efd);
		goto destroy;
	}
	dprintf("bs_icbd: tgt %d lun %" PRIu64 ": engine %s\n",
		lu->tgt->tid, lu->lun, icbd_lun_engine_name(info->lun));
	return TGTADM_SUCCESS;

destroy:
	icbd_lun_destroy(info->lun);
	info->lun = NULL;
	info->efd = info->tfd = -1;
	return TGTADM_UNKNOWN_ERR;
}

static void bs_icbd_exit(struct scsi_lu *lu)
{
	struct bs_icbd_info *info = BS_ICBD_I(lu);

	if (!info->lun)
		return;
	tgt_remove_sched_event(&info->submit_ev);
	if (info->tfd >= 0)
		tgt_event_del(info->tfd);
	tgt_event_del(info->efd);
	icbd_lun_destroy(info->lun);
	info->lun = NULL;
}

static struct backingstore_template icbd_bst = {
	.bs_name		= "icbd",
	.bs_datasize		= sizeof(struct bs_icbd_info),
	.bs_open		= bs_icbd_open,
	.bs_close		= bs_icbd_close,
	.bs_init		= bs_icbd_init,
	.bs_exit		= bs_icbd_exit,
	.bs_cmd_submit		= bs_icbd_cmd_submit,
	.bs_oflags_supported	= O_SYNC | O_DIRECT,
};

/* tgtd dlopen()s every file in its module directory and calls this. */
__attribute__((visibility("default"))) void register_bs_module(void)
{
	unsigned char opcodes[] = {
		ALLOW_MEDIUM_REMOVAL, COMPARE_AND_WRITE, FORMAT_UNIT, INQUIRY,
		MAINT_PROTOCOL_IN, MODE_SELECT, MODE_SELECT_10, MODE_SENSE,
		MODE_SENSE_10, ORWRITE_16, PERSISTENT_RESERVE_IN,
		PERSISTENT_RESERVE_OUT, PRE_FETCH_10, PRE_FETCH_16, READ_10,
		READ_12, READ_16, READ_6, READ_CAPACITY, RELEASE, REPORT_LUNS,
		REQUEST_SENSE, RESERVE, SEND_DIAGNOSTIC, SERVICE_ACTION_IN,
		START_STOP, SYNCHRONIZE_CACHE, SYNCHRONIZE_CACHE_16,
		TEST_UNIT_READY, UNMAP, VERIFY_10, VERIFY_12, VERIFY_16,
		WRITE_10, WRITE_12, WRITE_16, WRITE_6, WRITE_SAME,
		WRITE_SAME_16, WRITE_VERIFY, WRITE_VERIFY_12, WRITE_VERIFY_16,
	};

	/* tgtd allocates every command's data buffer (posix_memalign, page
	 * aligned) and frees it after the response. With glibc's defaults a
	 * 128 KiB buffer is its own mmap, and freed 4-128 KiB buffers at the top
	 * of the heap are trimmed back to the kernel, so each command touches
	 * fresh pages: one page fault per 4 KiB on tgtd's only thread (10x the
	 * CPU per 128 KiB command on a VM with costly faults, bench/RESULTS.md,
	 * issue 14 items 4-5). Keep them in the heap and keep the heap: tgtd's
	 * peak of buffers in flight stays resident. Process-wide, so every
	 * backend of this tgtd gains alike. */
	mallopt(M_MMAP_THRESHOLD, 4 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	icbd_set_log_sink(icbd_log);
	bs_create_opcode_map(&icbd_bst, opcodes, ARRAY_SIZE(opcodes));
	register_backingstore_template(&icbd_bst);
}

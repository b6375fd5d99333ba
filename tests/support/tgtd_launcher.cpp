// icbd_tgtd_launcher: how TgtdInstance starts tgtd. It makes tgtd die with the
// test program (PR_SET_PDEATHSIG), so a test killed by a CTest timeout leaves no
// tgtd behind on a machine other people share, and, with --no-io-uring, runs
// tgtd under a seccomp filter that makes io_uring_setup(2) fail with EPERM —
// what Docker's default profile and other container runtimes do — to test the
// libaio fallback even where the kernel.io_uring_disabled sysctl does not exist.
// The launcher hands ICBD_TGTD_LD_PRELOAD to tgtd as LD_PRELOAD: preloading
// into the launcher itself would trouble a sanitizer build of it.
// Usage: icbd_tgtd_launcher [--no-io-uring] PROGRAM [ARGS...]
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

bool block_io_uring() {
#if defined(__x86_64__)
    constexpr unsigned arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    constexpr unsigned arch = AUDIT_ARCH_AARCH64;
#else
#error "icbd_tgtd_launcher: add this architecture's AUDIT_ARCH"
#endif
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),  // another ABI: not ours to judge
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

}  // namespace

int main(int argc, char** argv) {
    int i = 1;
    bool no_io_uring = false;
    if (i < argc && std::strcmp(argv[i], "--no-io-uring") == 0) no_io_uring = true, ++i;
    if (i >= argc) {
        std::fprintf(stderr, "usage: %s [--no-io-uring] PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    const pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) return 1;  // parent already gone
    if (no_io_uring && !block_io_uring()) {
        std::fprintf(stderr, "icbd_tgtd_launcher: installing the seccomp filter: %s\n", std::strerror(errno));
        return 1;
    }
    if (const char* preload = std::getenv("ICBD_TGTD_LD_PRELOAD")) {
        setenv("LD_PRELOAD", preload, 1);
        unsetenv("ICBD_TGTD_LD_PRELOAD");
    }
    execv(argv[i], argv + i);
    std::fprintf(stderr, "icbd_tgtd_launcher: exec %s: %s\n", argv[i], std::strerror(errno));
    return 127;
}

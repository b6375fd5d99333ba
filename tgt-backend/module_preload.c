/* module_preload.c: lets tgtd use backing-store modules that are not installed
 * in its compiled-in module directory (/usr/lib/tgt/backing-store):
 *   LD_PRELOAD=.../libicbd_tgt_preload.so ICBD_TGT_MODULES=/path/bs_icbd.so tgtd ...
 * Before tgtd's main() runs, it does for each listed module exactly what tgtd's
 * bs_init() does for each file of its directory: dlopen, then register_bs_module().
 * Do not also install the same module system-wide for that tgtd: it would be
 * registered twice (the preloaded copy wins). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((constructor)) static void icbd_preload_modules(void)
{
	const char *list = getenv("ICBD_TGT_MODULES");
	char *copy, *save = NULL, *path;

	/* Only tgtd exports the symbols a module needs; stay out of any other
	 * program the variable leaks into (a wrapper such as setsid or env). */
	if (!list || !*list || strcmp(program_invocation_short_name, "tgtd") != 0)
		return;
	copy = strdup(list);
	if (!copy)
		return;
	for (path = strtok_r(copy, ":", &save); path; path = strtok_r(NULL, ":", &save)) {
		void (*reg)(void);
		void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);

		if (!h) {
			fprintf(stderr, "icbd_tgt_preload: cannot load module %s: %s\n", path, dlerror());
			continue;
		}
		reg = (void (*)(void))dlsym(h, "register_bs_module");
		if (!reg) {
			fprintf(stderr, "icbd_tgt_preload: module %s has no register_bs_module\n", path);
			continue;
		}
		reg();
	}
	free(copy);
	/* tgtd starts no helper programs we want to carry the module into. */
	unsetenv("LD_PRELOAD");
}

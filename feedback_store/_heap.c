/* Re-pointing one loaded library's import of a C function (see _native.keep_duckdb_heap).
 *
 * A shared library calls a function it imports (here DuckDB's malloc_trim) through a slot of
 * its global offset table that the dynamic loader fills in. gm_route_import finds that slot in
 * every loaded object whose file name contains a given part, through the object's own dynamic
 * section (its PLT relocations, symbol and string tables), and stores another address there.
 * Only that library's calls change; the function itself and every other caller stay as they
 * are. A slot in the read-only-after-relocation segment (RELRO) is made writable for the store
 * and read-only again.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int gm_noop_trim(size_t pad) {
    (void)pad;
    return 0;
}

void *gm_noop_trim_address(void) { return (void *)gm_noop_trim; }

typedef struct {
    const char *module_part, *symbol;
    void *target; /* NULL: only read the first slot found */
    void *seen;
    int slots, failed;
} route;

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static void **find_slot(struct dl_phdr_info *info, const char *symbol) {
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    if (!dyn) return NULL;
    uintptr_t relocs = 0, symtab = 0, strtab = 0;
    size_t size = 0;
    int64_t kind = DT_RELA;
    /* glibc has relocated these entries to addresses already */
    for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++) {
        if (d->d_tag == DT_JMPREL) relocs = d->d_un.d_ptr;
        else if (d->d_tag == DT_PLTRELSZ) size = d->d_un.d_val;
        else if (d->d_tag == DT_PLTREL) kind = (int64_t)d->d_un.d_val;
        else if (d->d_tag == DT_SYMTAB) symtab = d->d_un.d_ptr;
        else if (d->d_tag == DT_STRTAB) strtab = d->d_un.d_ptr;
    }
    if (!relocs || !symtab || !strtab) return NULL;
    const ElfW(Sym) *syms = (const ElfW(Sym) *)symtab;
    size_t step = kind == DT_REL ? sizeof(ElfW(Rel)) : sizeof(ElfW(Rela));
    for (size_t at = 0; at + step <= size; at += step) {
        const ElfW(Rel) *r = (const ElfW(Rel) *)(relocs + at); /* Rela starts like Rel */
#if __SIZEOF_POINTER__ == 8
        size_t index = ELF64_R_SYM(r->r_info);
#else
        size_t index = ELF32_R_SYM(r->r_info);
#endif
        if (strcmp((const char *)strtab + syms[index].st_name, symbol) == 0)
            return (void **)(info->dlpi_addr + r->r_offset);
    }
    return NULL;
}

static int in_relro(struct dl_phdr_info *info, uintptr_t address) {
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_GNU_RELRO && address >= lo && address < lo + ph->p_memsz) return 1;
    }
    return 0;
}

static int visit(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    route *r = arg;
    if (!info->dlpi_name || !strstr(base_name(info->dlpi_name), r->module_part)) return 0;
    void **slot = find_slot(info, r->symbol);
    if (!slot) return 0;
    if (!r->target) {
        r->seen = *slot;
        r->slots = 1;
        return 1;
    }
    uintptr_t page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    void *page = (void *)((uintptr_t)slot & ~(page_size - 1));
    int read_only = in_relro(info, (uintptr_t)slot);
    if (read_only && mprotect(page, page_size, PROT_READ | PROT_WRITE) != 0) {
        r->failed = 1;
        return 0;
    }
    __atomic_store_n(slot, r->target, __ATOMIC_SEQ_CST);
    if (read_only) mprotect(page, page_size, PROT_READ);
    r->slots++;
    return 0;
}

/* Point `symbol`'s import slot of every loaded object whose file name contains `module_part` at
 * `target`: the number of slots set, or -1 if a read-only slot could not be made writable. */
int gm_route_import(const char *module_part, const char *symbol, void *target) {
    if (!target) return -1;
    route r = {module_part, symbol, target, NULL, 0, 0};
    dl_iterate_phdr(visit, &r);
    return r.failed ? -1 : r.slots;
}

/* The address the first such slot holds now (NULL if there is none). */
void *gm_import_target(const char *module_part, const char *symbol) {
    route r = {module_part, symbol, NULL, NULL, 0, 0};
    dl_iterate_phdr(visit, &r);
    return r.seen;
}

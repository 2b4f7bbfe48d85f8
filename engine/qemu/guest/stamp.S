/*
 * Page-stamp guest: a boot sector that keeps writing memory, for migration tests.
 *
 * SeaBIOS loads these 512 bytes at 0x7c00 and jumps here in real mode. We enable A20,
 * switch to 32-bit protected mode with flat 4 GiB segments (no paging, interrupts off)
 * and then loop forever:
 *
 *     generation += 1
 *     header.generation = generation          (announced before the pass)
 *     for each stamped page p, in address order:  *(uint32 *)p = generation
 *     spin SPIN times
 *
 * The generation lives in a register (%eax) between passes, so it travels in the CPU
 * state of QEMU's device stream, not only in RAM: a destination that got RAM and CPU
 * state from different moments shows it (the header goes backwards, or pages break
 * the order below).
 *
 * The host reads progress straight from the RAM file (guest physical address == file
 * offset below 3.5 GiB on -machine pc/q35 for small guests). Layout, little-endian:
 *
 *     HEADER + 0   8 bytes  magic "LABGUEST", written last at boot: "the guest is up"
 *     HEADER + 8   u32      layout version (1)
 *     HEADER + 12  u32      first stamped page (physical address)
 *     HEADER + 16  u32      number of stamped pages
 *     HEADER + 20  u32      page size (4096)
 *     HEADER + 24  u32      generation: the pass in progress (or just finished)
 *
 * Consistency rule, true at every instant the guest is stopped: with G the header's
 * generation, the stamps read in address order are G,...,G,G-1,...,G-1 (either run may
 * be empty). That is QEMU's own migration-test rule, with a 32-bit counter.
 *
 * Parameters (assembler --defsym): HEADER, STAMP_START, STAMP_PAGES, SPIN.
 */
        .intel_syntax noprefix

        .ifndef HEADER
        .set HEADER, 0x100000           /* 1 MiB: above the BIOS area, needs A20 */
        .endif
        .ifndef STAMP_START
        .set STAMP_START, 0x200000      /* 2 MiB */
        .endif
        .ifndef STAMP_PAGES
        .set STAMP_PAGES, 1024          /* 4 MiB of stamped pages */
        .endif
        .ifndef SPIN
        .set SPIN, 0                    /* idle iterations after each pass */
        .endif

        .set PAGE, 4096
        .set COM1, 0x3f8
        .set CODE_SEL, 0x08
        .set DATA_SEL, 0x10

        .section .text
        .code16
        .globl _start
_start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     ss, ax
        mov     sp, 0x7c00
        cld

        in      al, 0x92                /* fast A20: bit 1 on, bit 0 (reset) off */
        or      al, 2
        and     al, 0xfe
        out     0x92, al

        lgdt    [gdt_descriptor]
        mov     eax, cr0
        or      eax, 1
        mov     cr0, eax
        ljmp    CODE_SEL, offset protected

        .code32
protected:
        mov     ax, DATA_SEL
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     gs, ax
        mov     ss, ax
        mov     esp, 0x7c00

        /* Clear the stamps first: a reused RAM file must not show old generations. */
        mov     edi, STAMP_START
        mov     ecx, STAMP_PAGES
clear:
        mov     dword ptr [edi], 0
        add     edi, PAGE
        dec     ecx
        jnz     clear

        mov     dword ptr [HEADER + 8], 1
        mov     dword ptr [HEADER + 12], STAMP_START
        mov     dword ptr [HEADER + 16], STAMP_PAGES
        mov     dword ptr [HEADER + 20], PAGE
        mov     dword ptr [HEADER + 24], 0
        mov     dword ptr [HEADER + 0], 0x4742414c  /* bytes "LABG" */
        mov     dword ptr [HEADER + 4], 0x54534555  /* bytes "UEST" */

        mov     esi, offset banner      /* one line on COM1, for -serial file:... */
print:
        lodsb
        test    al, al
        jz      printed
        mov     dx, COM1
        out     dx, al
        jmp     print
printed:

        xor     eax, eax
pass:
        inc     eax
        mov     dword ptr [HEADER + 24], eax
        mov     edi, STAMP_START
        mov     ecx, STAMP_PAGES
stamp:
        mov     dword ptr [edi], eax
        add     edi, PAGE
        dec     ecx
        jnz     stamp

        mov     ecx, SPIN
spin:
        test    ecx, ecx
        jz      pass
        dec     ecx
        jmp     spin

banner:
        .asciz  "multifd guest: stamping\r\n"

        .p2align 3
gdt:
        .quad   0                       /* null descriptor */
        .quad   0x00cf9a000000ffff      /* 0x08: code, base 0, limit 4 GiB, 32-bit */
        .quad   0x00cf92000000ffff      /* 0x10: data, base 0, limit 4 GiB */
gdt_descriptor:
        .word   gdt_descriptor - gdt - 1
        .long   gdt

        .org    510
        .word   0xaa55                  /* boot signature */

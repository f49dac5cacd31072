/* Offsets of kernel struct members from the running kernel's own headers,
 * for structs its BTF does not describe (IPVS's, where ip_vs is a module
 * and the kernel predates module BTF, 5.11). bcc compiles this against
 * /lib/modules/$(uname -r)/build, which the loader has checked holds the
 * headers of exactly the running release. Each member becomes a function
 * returning its offset, which the loader reads from the compiled bytecode
 * (tracer/loader.py, header_layout): nothing is loaded into the kernel.
 *
 * Configuration (-D): HEADER, the header that declares the structs (e.g.
 * <net/ip_vs.h>); MEMBERS(X), X(define, struct, member) for each offset
 * wanted; CHECKS(X), X(struct, member, offset) for members the running
 * kernel's BTF placed too: the headers must agree with it where both speak,
 * or they are not this kernel's and nothing is read from them.
 */
#include HEADER

#define OFFSET_OF(define, type, member) \
	int define(void *ctx) { return __builtin_offsetof(struct type, member); }
MEMBERS(OFFSET_OF)

#define AGREES(type, member, offset) \
	_Static_assert(__builtin_offsetof(struct type, member) == (offset), \
		       "struct " #type "." #member " differs from the running kernel's BTF");
CHECKS(AGREES)

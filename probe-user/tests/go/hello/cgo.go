//go:build withcgo

// A C thread-local beside the runtime's: the executable's TLS block then
// holds more than runtime.tlsg, whose place probe must take from the
// binary (-tags=withcgo, with cgo on).
package main

// static __thread long calls;
// static long count(void) { return ++calls; }
import "C"

func init() { C.count() }

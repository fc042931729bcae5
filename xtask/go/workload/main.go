// The Go workloads of `cargo xtask bench`: each times its own loop and
// prints one line in the report format of probe's own workload
// (`{"pid":…,"threads":[{"elapsed_ns":…,"calls":…}]}`), so that a tracer's
// cost is measured from inside the program it slows down.
//
//	workload --getppid N    N getppid calls in one goroutine
//	workload --chanpingpong N  N round trips between two goroutines over
//	                        unbuffered channels (the Go scheduler's own
//	                        switches, few syscalls)
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

type thread struct {
	ElapsedNs int64 `json:"elapsed_ns"`
	Calls     int64 `json:"calls"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: workload --getppid N | --chanpingpong N")
		os.Exit(2)
	}
	n, err := strconv.ParseInt(os.Args[2], 10, 64)
	if err != nil || n <= 0 {
		fmt.Fprintln(os.Stderr, "workload: N must be a positive number")
		os.Exit(2)
	}
	var elapsed time.Duration
	switch os.Args[1] {
	case "--getppid":
		start := time.Now()
		for i := int64(0); i < n; i++ {
			syscall.Getppid()
		}
		elapsed = time.Since(start)
	case "--chanpingpong":
		ping, pong := make(chan struct{}), make(chan struct{})
		go func() {
			for range ping {
				pong <- struct{}{}
			}
		}()
		start := time.Now()
		for i := int64(0); i < n; i++ {
			ping <- struct{}{}
			<-pong
		}
		elapsed = time.Since(start)
		close(ping)
	default:
		fmt.Fprintln(os.Stderr, "workload: unknown workload", os.Args[1])
		os.Exit(2)
	}
	report := map[string]interface{}{
		"pid":     os.Getpid(),
		"threads": []thread{{ElapsedNs: elapsed.Nanoseconds(), Calls: n}},
	}
	line, _ := json.Marshal(report)
	fmt.Println(string(line))
}

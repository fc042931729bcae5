// The Go load generator of `cargo xtask bench`: CLIENTS goroutines, each
// with a kept-alive connection of its own, send GET requests to URL one
// after another for DURATION, then it prints one JSON line: requests,
// requests/s and the 99th percentile of the requests' latency as the
// clients saw it.
//
//	load URL CLIENTS DURATION     e.g. load http://127.0.0.1:8080/ 20 5s
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
)

type report struct {
	Requests  int     `json:"requests"`
	Errors    int     `json:"errors"`
	ElapsedNs int64   `json:"elapsed_ns"`
	Rps       float64 `json:"rps"`
	P99Ns     int64   `json:"p99_ns"`
}

// usage says what is wrong with the arguments, and exits.
func usage(why string) {
	fmt.Fprintln(os.Stderr, "load:", why)
	fmt.Fprintln(os.Stderr, "usage: load URL CLIENTS DURATION")
	os.Exit(2)
}

func main() {
	if len(os.Args) != 4 {
		usage("three arguments expected")
	}
	url := os.Args[1]
	clients, err := strconv.Atoi(os.Args[2])
	if err != nil || clients <= 0 {
		usage("CLIENTS must be a positive number")
	}
	duration, err := time.ParseDuration(os.Args[3])
	if err != nil || duration <= 0 {
		usage("DURATION must be a positive duration, e.g. 5s")
	}
	latencies := make([][]time.Duration, clients)
	errors := make([]int, clients)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(duration)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			// One connection per client, kept alive between its requests.
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1}}
			for time.Now().Before(deadline) {
				sent := time.Now()
				response, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, response.Body)
					response.Body.Close()
					if err == nil && response.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", response.StatusCode)
					}
				}
				if err != nil {
					errors[c]++
					continue
				}
				latencies[c] = append(latencies[c], time.Since(sent))
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	out := report{ElapsedNs: elapsed.Nanoseconds()}
	for c := range latencies {
		all = append(all, latencies[c]...)
		out.Errors += errors[c]
	}
	out.Requests = len(all)
	if out.Requests == 0 {
		fmt.Fprintln(os.Stderr, "load: no request succeeded")
		os.Exit(1)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	out.Rps = float64(out.Requests) / elapsed.Seconds()
	out.P99Ns = all[(len(all)*99)/100].Nanoseconds()
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}

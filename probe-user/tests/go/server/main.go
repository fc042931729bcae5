// A small HTTP server under load from its own client: CLIENTS goroutines
// each make REQUESTS requests over one keep-alive connection to a server on
// the loopback, then the program lingers for LINGER milliseconds. It prints
// its own account as a JSON line: the requests the server answered, the
// goroutines that accepted the connections and served them (each request
// is handled on its connection's goroutine), and its threads (the
// runtime's count).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// goid parses "goroutine 18 [running]:" at the top of the goroutine's stack.
func goid() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, err := strconv.ParseInt(string(bytes.Fields(buf)[1]), 10, 64)
	if err != nil {
		panic(err)
	}
	return id
}

func main() {
	arg := func(i int) int {
		n, err := strconv.Atoi(os.Args[i])
		if err != nil {
			panic(err)
		}
		return n
	}
	clients, requests, linger := arg(1), arg(2), arg(3)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	var served atomic.Int64
	var connections sync.Map
	body := []byte("Hello world!\n")
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		connections.Store(goid(), true)
		w.Write(body)
	})}
	accepting := make(chan int64)
	go func() {
		accepting <- goid()
		server.Serve(listener)
	}()
	acceptor := <-accepting
	url := "http://" + listener.Addr().String() + "/"
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			for i := 0; i < requests; i++ {
				response, err := client.Get(url)
				if err != nil {
					panic(err)
				}
				io.Copy(io.Discard, response.Body)
				response.Body.Close()
			}
		}()
	}
	wg.Wait()
	time.Sleep(time.Duration(linger) * time.Millisecond)
	var serving []int64
	connections.Range(func(id, _ any) bool {
		serving = append(serving, id.(int64))
		return true
	})
	account, _ := json.Marshal(map[string]any{
		"served":      served.Load(),
		"accepted_by": acceptor,
		"served_by":   serving,
		"threads":     pprof.Lookup("threadcreate").Count(),
	})
	fmt.Println(string(account))
}

module scheduler

go 1.19

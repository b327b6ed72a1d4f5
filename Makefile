# Thin wrapper over CMake for the README commands.
#   make demo   install deps, build, train examples/digits on the CPU cores
#   make test   build (warnings are errors), run every test; unit tests also
#               under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench  autodist vs PyTorch, side by side
#   make fuzz   libFuzzer over the input parsers, FUZZ_SECONDS (30) per target
JOBS ?= $(shell nproc)

.PHONY: all build build-asan deps demo test bench fuzz clean
all: build

deps:
	bash scripts/install-deps.sh

build:
	cmake -S . -B build -DAD_WERROR=ON >/dev/null
	cmake --build build -j $(JOBS)

build-asan:
	cmake -S . -B build-asan -DAD_WERROR=ON -DAD_SANITIZE=ON >/dev/null
	cmake --build build-asan -j $(JOBS)

demo: deps build
	bash examples/digits/run.sh

test: build build-asan
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest -L unit --output-on-failure
	cd build && ctest --output-on-failure

bench: build
	/usr/bin/python3 bench/run.py
	/usr/bin/python3 bench/run.py --models resnet18,encoder17
	/usr/bin/python3 bench/infer.py
	/usr/bin/python3 bench/strategies.py

fuzz:
	bash scripts/fuzz.sh $(or $(FUZZ_SECONDS),30)

clean:
	rm -rf build build-asan

/*
 * Run an ATmega328P firmware ELF under simavr with UART0 on a pseudo-terminal,
 * so the tests drive the real firmware through the real Python driver.
 * Prints "PTY <path>" on stdout once the pty is up, then simulates until killed.
 *
 *   cc simavr_uart_pty.c $(pkg-config --cflags --libs simavr simavrparts) -o simavr_uart_pty
 *   ./simavr_uart_pty smartbin_servo.elf
 */
#include <stdio.h>
#include <string.h>

#include "sim_avr.h"
#include "sim_elf.h"
#include "uart_pty.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIRMWARE.elf\n", argv[0]);
        return 2;
    }
    elf_firmware_t firmware;
    memset(&firmware, 0, sizeof firmware);
    if (elf_read_firmware(argv[1], &firmware)) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    strcpy(firmware.mmcu, "atmega328p");
    firmware.frequency = 16000000;
    avr_t *avr = avr_make_mcu_by_name(firmware.mmcu);
    if (!avr) return 2;
    avr_init(avr);
    avr_load_firmware(avr, &firmware);

    static uart_pty_t uart;
    uart_pty_init(avr, &uart);
    uart_pty_connect(&uart, '0');
    printf("PTY %s\n", uart.pty.slavename);
    fflush(stdout);

    int state = cpu_Running;
    while (state != cpu_Done && state != cpu_Crashed) state = avr_run(avr);
    uart_pty_stop(&uart);
    return state == cpu_Crashed;
}

// Small shared pieces of the RL page's sections.
import { el } from "../ui";

export function num(testid: string, value: number, min: number, max: number, step: number, width = "5em"): HTMLInputElement {
  return el("input", { type: "number", value, min, max, step, style: `width:${width}`, "data-testid": testid }) as HTMLInputElement;
}

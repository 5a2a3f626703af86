// Hub console (provincial hub): the same media as a site, plus the live roster table.
import { startPage } from "./ui.js";

startPage("hub");
